"""Pair verification (LFW, CFP-FP, AgeDB-30 and any insightface .bin), 10-fold, under the insightface
and the seed protocols: the math in `protocol`, the command line of eval_lfw.py, eval_agedb30.py and
eval_cfp.py in `cli`."""

from ..thresholds import RocCurve, far_key
from .protocol import FAR_TARGETS, PROTOCOLS, VerificationResult, evaluate_verification, raw_pixel_baseline, \
    seed_fold_scores

__all__ = ["FAR_TARGETS", "PROTOCOLS", "RocCurve", "VerificationResult", "evaluate_verification", "far_key",
           "raw_pixel_baseline", "seed_fold_scores"]
