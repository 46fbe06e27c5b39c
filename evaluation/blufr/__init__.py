"""LFW under BLUFR (Liao et al., IJCB 2014): its config file (config), EvalROC and OpenSetROC over
the trials (protocol), its figures (figures, needs matplotlib) and eval_blufr.py's command line (cli)."""

from .config import BlufrConfig, read_blufr_config, write_blufr_config
from .protocol import (OPEN_SET_FAR_POINTS, RANK_POINTS, VERIFICATION_FAR_POINTS, BlufrResult, OpenSetResult,
                       evaluate_blufr, matlab_round, matlab_std, open_set_roc, verification_roc)

__all__ = [
    "OPEN_SET_FAR_POINTS", "RANK_POINTS", "VERIFICATION_FAR_POINTS", "BlufrConfig", "BlufrResult", "OpenSetResult",
    "evaluate_blufr", "matlab_round", "matlab_std", "open_set_roc", "read_blufr_config", "verification_roc",
    "write_blufr_config",
]
