"""Shared pieces of the threshold-search protocols: contiguous K-fold splits, the "threshold at a
target FAR" rule, the ROC curve they produce (RocCurve) and how a FAR target is named (far_key).

Folds follow scikit-learn's ``KFold(n_splits=K, shuffle=False)``, which insightface's
``verification.py`` uses: fold k is a contiguous block of items, and the first ``n % K`` folds hold
one item more than the others (for n = 6,000 and K = 10 that is the old LFW rule ``fold = i // 600``).

``threshold_at_far`` is insightface's ``calculate_val`` step "find the threshold that gives
FAR = far_target", ``scipy.interpolate.interp1d(far_train, thresholds, kind='slinear')(far_target)``.
SciPy up to 1.x built that interpolant as a degree-1 B-spline with knots ``[f0, f0, f1, ..., fm, fm]``
and no check for repeated abscissae; current SciPy refuses repeated FAR values, which every real
FAR curve has (it is flat wherever no impostor score lies between two grid thresholds). We evaluate
that old B-spline directly, with the same arithmetic, and never raise.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RocCurve(NamedTuple):
    """Points of a ROC: false accept rate, true accept rate, and the threshold of each point."""
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray


def far_key(far: float) -> str:
    """How a FAR target is written as a JSON key and in names: 1e-3 -> "1e-3"."""
    return f"{far:.0e}".replace("e-0", "e-")


def kfold_bounds(n_items: int, n_folds: int) -> list[tuple[int, int]]:
    """[(start, stop)] of each test fold, as sklearn's KFold(n_splits=n_folds, shuffle=False)."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if n_items < n_folds:
        raise ValueError(f"cannot split {n_items} pairs into {n_folds} folds: need at least one pair a fold")
    sizes = np.full(n_folds, n_items // n_folds, dtype=np.int64)
    sizes[: n_items % n_folds] += 1
    stops = np.cumsum(sizes)
    starts = stops - sizes
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def count_below(sorted_values: np.ndarray, thresholds) -> np.ndarray:
    """How many of `sorted_values` are strictly below each threshold (NaNs sort last, never count)."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def count_above(sorted_values: np.ndarray, thresholds) -> np.ndarray:
    """How many of `sorted_values` (NaN-free, ascending) are strictly above each threshold."""
    return len(sorted_values) - np.searchsorted(sorted_values, thresholds, side="right")


def threshold_at_far(far: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The threshold at which the training FAR curve reaches `far_target`, as insightface's
    ``calculate_val`` got it from SciPy's old 'slinear' interp1d (module docstring).

    `far[i]` is the FAR when accepting distance < thresholds[i] (ascending, so `far` never
    decreases). Take the largest j with far[j] <= far_target and interpolate linearly towards
    j + 1, with de Boor's arithmetic (a target on a flat stretch lands on its end). No grid point
    within the target gives thresholds[0]; a target equal to the curve's last, flat maximum gives
    thresholds[-1] (where old SciPy's empty knot span returned 0.0).
    """
    far = np.asarray(far, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if far.shape != thresholds.shape or far.ndim != 1 or far.size == 0:
        raise ValueError(f"far and thresholds must be equal-length 1-D arrays, got shapes "
                         f"{far.shape} and {thresholds.shape}")
    if np.max(far) < far_target:
        return float(thresholds[0])
    j = int(np.searchsorted(far, far_target, side="right")) - 1
    if j < 0:
        return float(thresholds[0])
    last = far.size - 1
    if j == last:
        if last == 0 or far[last - 1] == far[last]:
            return float(thresholds[last])
        j = last - 1
    weight = 1.0 / (far[j + 1] - far[j])
    lower = thresholds[j] * (weight * (far[j + 1] - far_target))
    upper = thresholds[j + 1] * (weight * (far_target - far[j]))
    return float(0.0 + lower + upper)
