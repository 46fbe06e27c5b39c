"""BLUFR's two measures (Liao, Lei, Yi, Li, "A Benchmark Study of Large-scale Unconstrained Face
Recognition", IJCB 2014), as its MATLAB functions EvalROC and OpenSetROC define them, on the cosine
scores of L2-normalised features.

Scores: each feature row is divided by its L2 norm in float64 and the score of two rows is their
dot product in float64 (MATLAB's double), as BLUFR's demo scores ``normr(X) * normr(X)'``.

Verification (EvalROC with no probe labels): the pairs below the diagonal of the test x test score
matrix; genuine when the two labels are equal. With N_imp impostor pairs, each FAR point f gives
false alarms k = round(f * N_imp) (MATLAB's round: half away from zero) and the threshold is the k-th
highest impostor score; k = 0 puts the threshold halfway between the highest impostor score and
the lowest genuine score above it (the highest impostor score + sqrt(eps) when no genuine score is
above it); k = N_imp puts it sqrt(eps) below the lowest score of either kind. VR = the fraction of
genuine scores >= the threshold, FAR = k / N_imp.

Open-set identification (OpenSetROC): gallery x probe scores; a probe whose label is in the gallery is
a genuine probe, the others impostor probes. An impostor probe's detection score is its highest
gallery score; thresholds come from those N_imp scores by the rules above. A genuine probe's score is
its highest score among the gallery images of its own label (the first of them on a tie), and its
rank is that image's position in the probe's gallery scores sorted in descending order, stably (equal
scores keep the gallery order). DIR at (rank r, FAR point) = the fraction of genuine probes whose
score is >= the threshold and whose rank is <= r. Without explicit rank points, the ranks are
1..10, 20..100 up to the gallery size, as OpenSetROC's default.

The implementations here never hold the test x test matrix: verification walks it in row blocks and
picks the needed order statistics with a partial sort; ranks are counted, not sorted. The tests hold
them to plain re-statements of the MATLAB code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _far_points(lowest_power: int) -> np.ndarray:
    """[0, kron(10.^(lowest_power:-1), 1:9), 1], as BLUFR's demo writes them: each power of ten the
    correctly rounded double (libm's pow; numpy's integer-power loop is 1 ulp off at 1e-5), times 1..9."""
    return np.array([0.0] + [10.0 ** power * j for power in range(lowest_power, 0) for j in range(1, 10)] + [1.0])


VERIFICATION_FAR_POINTS = _far_points(-8)
OPEN_SET_FAR_POINTS = _far_points(-4)
RANK_POINTS = np.concatenate((np.arange(1, 11), np.arange(20, 101, 10)))
# The reported points: VR at FAR = 0.1%, DIR at rank 1 and FAR = 1%.
REPORT_VERIFICATION_FAR, REPORT_OPEN_SET_FAR, REPORT_RANK = 0.001, 0.01, 1
SQRT_EPS = float(np.sqrt(np.finfo(np.float64).eps))
_BLOCK_ELEMENTS = 1 << 23  # float64 scores of one verification row block (64 MiB)


def matlab_round(values) -> np.ndarray:
    """MATLAB's round: to the nearest integer, halves away from zero (numpy's rounds halves to even)."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    return np.sign(values) * (whole + (magnitude - whole >= 0.5))


def unit_rows(features) -> np.ndarray:
    """float64 copies of the rows divided by their L2 norms; a zero or non-finite row is refused."""
    rows = np.asarray(features, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"features must be a [rows, D] matrix, got shape {rows.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"feature row {int(bad[0])} is zero or holds a NaN or infinite value")
    return rows / norms[:, None]


def _thresholds(impostor_best: np.ndarray, genuine: np.ndarray, false_alarms: np.ndarray) -> np.ndarray:
    """EvalROC's and OpenSetROC's thresholds from the impostor scores (any order; reordered in
    place), the genuine scores and the false-alarm counts: the k-th highest impostor score, with the
    rules for k = 0 and k = N."""
    n_impostors = impostor_best.size
    middle = (false_alarms > 0) & (false_alarms < n_impostors)
    positions = n_impostors - false_alarms[middle]  # the k-th highest is at n - k in ascending order
    wanted = np.unique(np.concatenate((positions, [0, n_impostors - 1]))).astype(np.int64)
    impostor_best.partition(wanted)
    ordered = impostor_best
    highest, lowest = ordered[-1], ordered[0]
    thresholds = np.zeros(false_alarms.size)
    thresholds[middle] = ordered[positions]
    above = genuine[genuine > highest]
    thresholds[false_alarms == 0] = (highest + above.min()) / 2 if above.size else highest + SQRT_EPS
    thresholds[false_alarms == n_impostors] = min(lowest, genuine.min()) - SQRT_EPS
    return thresholds


def _fraction_at_or_above(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return (sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="left")) / sorted_scores.size


def verification_roc(features, labels, far_points=VERIFICATION_FAR_POINTS,
                     block_elements: int = _BLOCK_ELEMENTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EvalROC(score, labels, [], far_points) of the cosine scores of `features` [n, D] with
    `labels` [n]: (VR, FAR, thresholds), one value per FAR point."""
    unit = unit_rows(features)
    labels = np.asarray(labels).reshape(-1)
    n = labels.size
    if unit.shape[0] != n:
        raise ValueError(f"{unit.shape[0]} feature rows for {n} labels")
    counts = np.unique(labels, return_counts=True)[1].astype(np.int64)
    n_genuine = int((counts * (counts - 1) // 2).sum())
    n_impostors = n * (n - 1) // 2 - n_genuine
    if n_genuine == 0 or n_impostors == 0:
        raise ValueError(f"{n} images give {n_genuine} genuine and {n_impostors} impostor pairs; "
                         "verification needs both")
    # Grouped by label (the pairs and their scores do not depend on the order), a row's impostors
    # below the diagonal are the columns before its label's first row, its genuine pairs the columns
    # from there to the diagonal: one comparison per cell instead of a mask per kind.
    order = np.argsort(labels, kind="stable")
    unit, labels = unit[order], labels[order]
    group_start = np.searchsorted(labels, labels, side="left")
    impostor, filled = np.empty(n_impostors), 0
    rows = max(1, block_elements // n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        columns = int(group_start[start:stop].max())
        if columns == 0:
            continue
        scores = unit[start:stop] @ unit[:columns].T
        values = scores[np.arange(columns)[None, :] < group_start[start:stop, None]]
        impostor[filled:filled + values.size] = values
        filled += values.size
    genuine = []
    for first, count in zip(np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]]), counts):
        if count > 1:
            group = unit[first:first + count]
            genuine.append((group @ group.T)[np.tril_indices(count, -1)])
    genuine = np.concatenate(genuine)
    far_points = np.asarray(far_points, dtype=np.float64)
    _check_far_points(far_points)
    false_alarms = matlab_round(far_points * n_impostors).astype(np.int64)
    thresholds = _thresholds(impostor, genuine, false_alarms)
    return _fraction_at_or_above(np.sort(genuine), thresholds), false_alarms / n_impostors, thresholds


def _check_far_points(far_points: np.ndarray) -> None:
    if far_points.ndim != 1 or far_points.size == 0 or (far_points < 0).any() or (far_points > 1).any():
        raise ValueError("FAR points must lie in [0, 1]")


def default_rank_points(gallery_size: int) -> np.ndarray:
    """OpenSetROC's default ranks: 1..10, 20..100, those above the gallery size removed."""
    return RANK_POINTS[RANK_POINTS <= gallery_size]


@dataclass
class OpenSetResult:
    dir: np.ndarray            # [ranks, FAR points] detection and identification rates
    far: np.ndarray            # [FAR points] false alarms / impostor probes
    thresholds: np.ndarray     # [FAR points]
    rank_points: np.ndarray
    n_genuine_probes: int
    n_impostor_probes: int


def open_set_roc(gallery, gallery_labels, probes, probe_labels, far_points=OPEN_SET_FAR_POINTS,
                 rank_points=None) -> OpenSetResult:
    """OpenSetROC(score, gallery_labels, probe_labels, far_points[, rank_points]) with score = the
    cosine scores of the gallery features [G, D] (rows) against the probe features [P, D] (columns)."""
    gallery_labels = np.asarray(gallery_labels).reshape(-1)
    probe_labels = np.asarray(probe_labels).reshape(-1)
    scores = unit_rows(gallery) @ unit_rows(probes).T
    if scores.shape != (gallery_labels.size, probe_labels.size):
        raise ValueError(f"scores {scores.shape} for {gallery_labels.size} gallery and {probe_labels.size} "
                         "probe labels")
    rank_points = default_rank_points(gallery_labels.size) if rank_points is None else np.asarray(rank_points)
    match = gallery_labels[:, None] == probe_labels[None, :]
    genuine_probe = match.any(axis=0)
    n_genuine, n_impostors = int(genuine_probe.sum()), int((~genuine_probe).sum())
    if n_genuine == 0 or n_impostors == 0:
        raise ValueError(f"{n_genuine} genuine and {n_impostors} impostor probes; open-set identification needs both")
    far_points = np.asarray(far_points, dtype=np.float64)
    _check_far_points(far_points)
    false_alarms = matlab_round(far_points * n_impostors).astype(np.int64)
    impostor_best = scores[:, ~genuine_probe].max(axis=0)

    genuine_scores = scores[:, genuine_probe]
    own = np.where(match[:, genuine_probe], genuine_scores, -np.inf)
    own_index = own.argmax(axis=0)  # the first of equal maxima, as MATLAB's max
    columns = np.arange(n_genuine)
    best = own[own_index, columns]
    # position in a stable descending sort: every higher score, and equal ones earlier in the gallery
    higher = (genuine_scores > best).sum(axis=0)
    tied_before = ((genuine_scores == best) & (np.arange(gallery_labels.size)[:, None] < own_index)).sum(axis=0)
    ranks = 1 + higher + tied_before

    thresholds = _thresholds(impostor_best, best, false_alarms)
    detected = (best[:, None] >= thresholds[None, :]).astype(np.float64)
    identified = (ranks[:, None] <= rank_points[None, :]).astype(np.float64)
    dir_values = identified.T @ detected / n_genuine  # counts of both, as MATLAB's mean of logicals
    return OpenSetResult(dir_values, false_alarms / n_impostors, thresholds, rank_points, n_genuine, n_impostors)


def matlab_std(values, axis=0) -> np.ndarray:
    """MATLAB's std along `axis`: normalised by N - 1, and 0 for a single value."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[axis] == 1:
        return np.zeros(np.delete(values.shape, axis))
    return values.std(axis=axis, ddof=1)


@dataclass
class BlufrResult:
    vr: np.ndarray             # [trials, verification FAR points]
    verification_far: np.ndarray
    dir: np.ndarray            # [trials, ranks, open-set FAR points]
    open_set_far: np.ndarray
    rank_points: np.ndarray
    trial_sizes: list          # per trial: {test, genuine_pairs..., gallery, genuine_probes, impostor_probes}

    @property
    def vr_trials(self) -> np.ndarray:
        return self.vr[:, _index_of(VERIFICATION_FAR_POINTS, REPORT_VERIFICATION_FAR)]

    @property
    def dir_trials(self) -> np.ndarray:
        rank, far = _index_of(self.rank_points, REPORT_RANK), _index_of(OPEN_SET_FAR_POINTS, REPORT_OPEN_SET_FAR)
        return self.dir[:, rank, far]

    @staticmethod
    def fused(values) -> float:
        """BLUFR's reported number: mean - std over the trials."""
        return float(np.mean(values) - matlab_std(np.asarray(values)[:, None], axis=0)[0])

    def to_json(self) -> dict:
        return {
            "vr": self.fused(self.vr_trials), "dir": self.fused(self.dir_trials),
            "vr_trials": self.vr_trials.tolist(), "dir_trials": self.dir_trials.tolist(),
            "vr_mean": float(self.vr_trials.mean()), "vr_std": float(matlab_std(self.vr_trials[:, None])[0]),
            "dir_mean": float(self.dir_trials.mean()), "dir_std": float(matlab_std(self.dir_trials[:, None])[0]),
            "verification_far": REPORT_VERIFICATION_FAR, "open_set_far": REPORT_OPEN_SET_FAR, "rank": REPORT_RANK,
            "trials": len(self.trial_sizes), "trial_sizes": self.trial_sizes,
        }


def _index_of(points, value) -> int:
    return int(np.flatnonzero(np.asarray(points) == value)[0])  # MATLAB's ismember: exact equality


def evaluate_blufr(features, config) -> BlufrResult:
    """Every trial of a BlufrConfig on features [N, D] in the config's imageList order."""
    if len(features) != len(config.image_list):
        raise ValueError(f"{len(features)} feature rows for the {len(config.image_list)} images of imageList")
    labels = config.labels
    vr, verification_far, dir_values, open_set_far, sizes = [], [], [], [], []
    # OpenSetROC's default ranks drop those above the gallery size; the trials share the ranks of
    # the smallest gallery (every rank up to 100 with LFW's galleries of 1,000 images)
    ranks = default_rank_points(min(len(gallery) for gallery in config.gallery))
    for trial, (test, gallery, probes) in enumerate(zip(config.test, config.gallery, config.probes), 1):
        try:
            trial_vr, trial_far, _ = verification_roc(features[test], labels[test])
            # OpenSetROC(score(gIdx, pIdx), ...): the gallery and probe rows of the test set's scores
            open_set = open_set_roc(features[gallery], labels[gallery], features[probes], labels[probes],
                                    rank_points=ranks)
        except ValueError as error:
            raise ValueError(f"trial {trial}: {error}") from None
        vr.append(trial_vr)
        verification_far.append(trial_far)
        dir_values.append(open_set.dir)
        open_set_far.append(open_set.far)
        sizes.append({"test": int(len(test)), "gallery": int(len(gallery)), "probes": int(len(probes)),
                      "genuine_probes": open_set.n_genuine_probes, "impostor_probes": open_set.n_impostor_probes})
    return BlufrResult(np.array(vr), np.array(verification_far), np.array(dir_values), np.array(open_set_far),
                       ranks, sizes)
