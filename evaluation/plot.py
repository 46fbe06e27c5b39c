"""Figures of results as PNG files: ROC curves (true accept rate against false accept rate on a log
axis) and MegaFace CMC curves (identification rate against rank). Drawn on matplotlib's Agg canvas
directly, so no pyplot backend or global state is touched."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from runtime import atomic_file

from .thresholds import RocCurve


@contextmanager
def figure_axes(path, title: str, xlabel: str, ylabel: str, log_x: bool = False, legend_size=None):
    """Axes to draw on; on leaving, the labels, grid and legend are added and the PNG is written."""
    figure = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if log_x:
        axes.set_xscale("log")
    yield axes
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.4)
    axes.grid(True, which="minor", alpha=0.15)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower right", fontsize=legend_size)
    figure.tight_layout()
    with atomic_file(path) as handle:  # whole or not at all, its folder made if needed
        figure.savefig(handle, format="png")


def _as_curve(item) -> tuple[RocCurve, str]:
    if isinstance(item, RocCurve):
        return item, "ROC"
    if isinstance(getattr(item, "roc", None), RocCurve) and hasattr(item, "accuracy_mean"):  # a VerificationResult
        return item.roc, f"{item.protocol} (accuracy {100 * item.accuracy_mean:.2f}%)"
    raise TypeError(f"cannot plot a {type(item).__name__}: give VerificationResult or RocCurve objects")


def save_roc_png(result_or_results, path, labels=None, title: str = "ROC", min_fpr: float | None = None) -> None:
    """Write the ROC of one result or of a list of them (VerificationResult or RocCurve, e.g. the
    per-distractor-count curves of a MegaFace result) to `path` as a PNG. Points with FPR 0 cannot
    sit on the log axis and are left out; the axis starts at `min_fpr` or the smallest FPR shown."""
    items = result_or_results if isinstance(result_or_results, (list, tuple)) and not isinstance(
        result_or_results, RocCurve) else [result_or_results]
    curves = [_as_curve(item) for item in items]
    if labels is not None and len(labels) != len(curves):
        raise ValueError(f"{len(labels)} labels for {len(curves)} curves")
    with figure_axes(path, title, "false accept rate (FAR)", "true accept rate (TAR)", log_x=True) as axes:
        smallest = 1.0
        for index, (curve, default_label) in enumerate(curves):
            fpr, tpr = np.asarray(curve.fpr, dtype=float), np.asarray(curve.tpr, dtype=float)
            shown = fpr > 0
            if not shown.any():
                continue
            # in threshold order: both rates move monotonically with the threshold, so this is the curve
            axes.plot(fpr[shown], tpr[shown], linewidth=1.5,
                      label=labels[index] if labels is not None else default_label)
            smallest = min(smallest, float(fpr[shown].min()))
        lowest = min_fpr if min_fpr is not None else smallest
        axes.set_xlim(lowest if lowest < 1.0 else 0.1, 1.0)  # only FAR 1 shown (a tiny set): one decade
        axes.set_ylim(0.0, 1.0)


def save_cmc_png(results: dict, path, title: str = "MegaFace Challenge 1 CMC (FaceScrub probes)") -> None:
    """CMC curves of MegaFace results ({label suffix: MegaFaceResult}), one per distractor count; the
    second result's curves (e.g. the refined ones) are dashed."""
    with figure_axes(path, title, "rank", "identification rate (%)", legend_size="small") as axes:
        for style, (suffix, result) in zip(("-", "--"), results.items()):
            for colour, (count, curve) in enumerate(result.cmc.items()):
                axes.plot(np.arange(1, len(curve) + 1), 100 * np.asarray(curve), style, marker="o", markersize=3,
                          color=f"C{colour % 10}", label=f"{count:,} distractors{suffix}")
