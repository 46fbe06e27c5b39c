"""eval_ijb.py's figures: the 1:1 ROC, and the 1:N CMC and DET (TPIR against FPIR) curves of each
gallery and of their mean, drawn with evaluation/plot.py's helpers."""

from __future__ import annotations

import os

import numpy as np

from .protocol import DET_FPIRS, IJBResult
from ..plot import figure_axes, save_roc_png
from ..thresholds import RocCurve

_ROC_POINTS = 4000  # what a figure can show: the curve thinned on the log FPR axis


def thinned(fpr: np.ndarray, tpr: np.ndarray, points: int = _ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most about `points` points of a ROC with FPR > 0, evenly spaced on log(FPR), endpoints kept."""
    shown = np.flatnonzero(fpr > 0)
    if shown.size <= points:
        return fpr[shown], tpr[shown]
    grid = np.geomspace(fpr[shown[0]], 1.0, points)
    picked = np.unique(np.concatenate((shown[[0, -1]], shown[np.searchsorted(fpr[shown], grid).clip(0, shown.size - 1)])))
    return fpr[picked], tpr[picked]


def save_ijb_figures(result: IJBResult, out_dir, set_name: str) -> dict:
    """{kind: path} of roc.png and, with 1:N results, cmc.png and det.png written under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    title = set_name.upper().replace("IJB", "IJB-")
    files = {"roc": os.path.join(out_dir, f"{set_name}_roc.png")}
    fpr, tpr = thinned(result.roc.fpr, result.roc.tpr)
    save_roc_png(RocCurve(fpr, tpr, np.zeros_like(fpr)), files["roc"], labels=[f"{result.mode}"],
                 title=f"{title} 1:1 ROC", min_fpr=1e-6)
    if not result.galleries:
        return files
    files["cmc"] = os.path.join(out_dir, f"{set_name}_cmc.png")
    with figure_axes(files["cmc"], f"{title} 1:N CMC ({result.n_probes:,} probe templates)", "rank",
                 "identification rate (%)") as axes:
        for gallery in result.galleries:
            axes.plot(np.arange(1, len(gallery.cmc_counts) + 1), 100 * gallery.cmc_counts / gallery.n_mated,
                      linewidth=1.2, label=f"{gallery.name} (of its {gallery.n_mated:,} mated probes)")
        cmc = result.cmc()
        axes.plot(np.arange(1, len(cmc) + 1), 100 * cmc, linewidth=2, color="black", label="both (of all probes)")
        axes.set_xscale("log")
    files["det"] = os.path.join(out_dir, f"{set_name}_det.png")
    with figure_axes(files["det"], f"{title} 1:N DET", "false positive identification rate (FPIR)",
                 "true positive identification rate (TPIR)", log_x=True) as axes:
        for gallery in result.galleries:
            axes.plot(DET_FPIRS, gallery.det_tpir, linewidth=1.2, label=gallery.name)
        axes.plot(DET_FPIRS, np.mean([g.det_tpir for g in result.galleries], axis=0), linewidth=2, color="black",
                  label="mean")
        axes.set_xlim(DET_FPIRS[0], 1.0)
        axes.set_ylim(0.0, 1.0)
    return files
