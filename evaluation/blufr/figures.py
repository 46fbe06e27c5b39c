"""BLUFR's three figures, as its demo draws them from the mean - std curves over the trials: the
verification ROC (VR against the mean FAR), the open-set identification ROC at rank 1 (DIR against
the mean FAR) and the CMC at FAR = 1% (DIR against rank)."""

from __future__ import annotations

import os

import numpy as np

from ..plot import figure_axes
from .protocol import OPEN_SET_FAR_POINTS, REPORT_OPEN_SET_FAR, REPORT_RANK, BlufrResult, matlab_std

FIGURES = {"roc": "blufr_roc.png", "open_set_roc": "blufr_open_set_roc.png", "cmc": "blufr_cmc.png"}


def _fused(values: np.ndarray) -> np.ndarray:
    return values.mean(axis=0) - matlab_std(values, axis=0)


def save_blufr_figures(result: BlufrResult, out_dir: str, title: str = "BLUFR") -> dict:
    """{name: path} of the three PNG files written under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, filename) for name, filename in FIGURES.items()}
    rank_index = int(np.flatnonzero(result.rank_points == REPORT_RANK)[0])
    far_index = int(np.flatnonzero(OPEN_SET_FAR_POINTS == REPORT_OPEN_SET_FAR)[0])
    fused_dir = _fused(result.dir)
    curves = (
        ("roc", f"{title} face verification ROC", "false accept rate (%)", "verification rate (%)", True,
         result.verification_far.mean(axis=0), _fused(result.vr)),
        ("open_set_roc", f"{title} open-set identification ROC at rank {REPORT_RANK}", "false accept rate (%)",
         "detection and identification rate (%)", True, result.open_set_far.mean(axis=0), fused_dir[rank_index]),
        ("cmc", f"{title} open-set identification CMC at FAR = {100 * REPORT_OPEN_SET_FAR:g}%", "rank",
         "detection and identification rate (%)", False, result.rank_points.astype(float), fused_dir[:, far_index]),
    )
    for name, title_text, xlabel, ylabel, log_x, x, y in curves:
        with figure_axes(paths[name], title_text, xlabel, "mean - std " + ylabel, log_x=log_x) as axes:
            x = 100 * np.asarray(x) if log_x else np.asarray(x)
            shown = x > 0 if log_x else np.ones(x.size, bool)  # FAR 0 has no place on a log axis
            axes.plot(x[shown], 100 * np.asarray(y)[shown], marker="o", markersize=3, linewidth=1.5)
            axes.set_ylim(0, 100)
    return paths
