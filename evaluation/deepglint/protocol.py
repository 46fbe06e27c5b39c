"""The DeepGlint Trillion-Pairs measures, computed natively wherever identity labels exist, exactly
at the challenge's size (1,862,120 images: about 5 * 10^11 pairs) without storing the scores.

The protocol as read here (the challenge's own pages are gone; docs/evaluation-blufr-deepglint.md
says what it rests on): every image is a probe (an identity label) or a distractor (none). The score
of two images is the cosine of their features, in float64: each float32 feature row divided by its
L2 norm in float64, then the dot product.

Verification, TPR at FPR f: the pairs are every unordered probe-probe pair and every probe-distractor
pair; positives are the probe pairs of one identity, negatives all the others (N_neg). With k =
floor(f * N_neg) (f taken as the decimal it is written as, so 1e-9 is exactly one in a billion), the
threshold t is the (k+1)-th highest negative score and TPR is the fraction of positive pairs scoring
strictly above t: at most k negatives do. When k >= N_neg every pair is accepted (t = -inf).

Identification, rank-1 as MegaFace defines it: each ordered pair (a, b) of distinct probe images of
one identity is a trial, correct when score(a, b) is strictly greater than a's score with every
distractor.

How it is exact without 5 * 10^11 stored scores: the scores are float32 matrix products of the
float32-rounded unit features, a tile at a time (TF32 off), and these differ from the float64 scores
by at most `margin` (float32_error_bound: rounding of the unit features and of a D-term dot product).
A running set keeps the k+1 highest float64 scores seen. A tile's scores within `margin` of the
running bound (the lowest kept score once k+1 are kept, or, before that, the tile's own (k+1)-th
float32 score less `margin`) are rescored in float64 and merged in; any score that can belong to the
final k+1 is among them, so the threshold is the brute-force one. Rank-1 keeps each probe's highest
float32 distractor score; a trial whose float64 genuine score lies within `margin` of it is decided
again against the probe's float64 best, found in a second pass over the distractors for those probes
only. Positive scores are float64 products per identity. Tests compare all of it with brute force.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
import torch
from tqdm import tqdm

from runtime import resolve_device
from runtime.numeric import exact_float32_matmul


_COLUMN_CHUNK = {"cpu": 4096, "cuda": 16384}        # feature rows read and moved at a time
_TILE_ELEMENTS = {"cpu": 1 << 24, "cuda": 1 << 28}  # float32 scores of one tile: 64 MiB / 1 GiB
_MAX_KEPT = 1 << 24                                  # k + 1 at most (f = 1e-9 at the real size: ~470)
_RESCORE_PAIRS = 1 << 15                             # pairs rescored in float64 at a time
_UNIT_ROWS = 1 << 16                                 # rows converted to unit float32 at a time


def float32_error_bound(dim: int) -> float:
    """A bound on |float32 score - exact cosine| for unit features rounded to float32 (at most u
    relative error each: 2u on the product) and a float32 dot product of `dim` terms (at most
    gamma_dim = dim*u / (1 - dim*u) for unit vectors, in any summation order), with u = 2^-24; doubled,
    plus 1e-12 for the float64 rescoring's own rounding."""
    u = 2.0 ** -24
    return 2 * ((dim + 3) * u / (1 - dim * u)) + 1e-12


@dataclass
class DeepGlintResult:
    fpr: str                    # the FPR as given (decimal)
    tpr: float                  # verification: TPR at that FPR
    threshold: float            # the (k+1)-th highest negative score (-inf when every pair is accepted)
    false_accepts: int          # k = floor(FPR * negative pairs)
    rank1: float                # identification: MegaFace rank-1
    n_probes: int
    n_identities: int
    n_distractors: int
    n_positive_pairs: int
    n_negative_pairs: int
    n_trials: int               # ordered same-identity probe pairs
    dim: int
    margin: float               # float32_error_bound(dim)
    rescored_pairs: int         # negative pairs rescored in float64 for the threshold
    rank1_rescored_probes: int  # probes whose best distractor was found again in float64

    def to_json(self) -> dict:
        record = asdict(self)
        record["threshold"] = self.threshold if np.isfinite(self.threshold) else None
        return record


def _unit64(raw: np.ndarray, norms: np.ndarray) -> np.ndarray:
    return raw.astype(np.float64) / norms[:, None]


def _norms(raw: np.ndarray, row_ids: np.ndarray) -> np.ndarray:
    rows = raw.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(f"feature row {int(row_ids[bad[0]])} is zero or holds a NaN or infinite value")
    return norms


def _read_rows(features, rows: np.ndarray) -> np.ndarray:
    """float32 rows of an array or memory map: one slice when the rows are consecutive."""
    if rows.size and rows[-1] - rows[0] + 1 == rows.size:
        block = features[int(rows[0]):int(rows[-1]) + 1]
    else:
        block = features[rows]
    return np.ascontiguousarray(block, dtype=np.float32)


def _pair_scores(a_raw, a_norms, a_index, b_raw, b_norms, b_index) -> np.ndarray:
    """float64 cosines of the pairs (a_raw[a_index[p]], b_raw[b_index[p]])."""
    out = np.empty(len(a_index))
    for start in range(0, len(a_index), _RESCORE_PAIRS):
        a, b = a_index[start:start + _RESCORE_PAIRS], b_index[start:start + _RESCORE_PAIRS]
        out[start:start + len(a)] = np.einsum("ij,ij->i", _unit64(a_raw[a], a_norms[a]), _unit64(b_raw[b], b_norms[b]))
    return out


def _float32_below(value: float) -> float:
    """The largest float32 <= value (the lowest finite float32 for -inf): a cut that loses nothing."""
    if value == -np.inf:
        return float(np.finfo(np.float32).min)
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


class _HighestScores:
    """The `size` highest float64 scores among every tile offered (their values: ties are kept)."""

    def __init__(self, size: int, margin: float):
        self.size, self.margin = size, margin
        self.values = np.empty(0)
        self.bound = -np.inf  # never above the final size-th highest float64 score
        self.rescored = 0

    def offer(self, scores: torch.Tensor, row_max: torch.Tensor, rescore) -> None:
        """scores: a float32 tile (-inf where a cell is no pair); row_max: its row maxima;
        rescore(rows, columns) -> the float64 scores of those cells."""
        if self.values.size < self.size and scores.numel() >= self.size:
            # k+1 cells at or above the tile's (k+1)-th float32 score: their float64 scores are >= it - margin
            kth = float(torch.topk(scores.reshape(-1), self.size, sorted=False).values.min())
            if np.isfinite(kth):
                self.bound = max(self.bound, kth - self.margin)
        cut = _float32_below(self.bound - self.margin)
        rows = torch.nonzero(row_max >= cut).reshape(-1)
        if rows.numel() == 0:
            return
        hit_rows, hit_columns = torch.nonzero(scores[rows] >= cut, as_tuple=True)
        exact = rescore(rows[hit_rows].cpu().numpy(), hit_columns.cpu().numpy())
        self.rescored += exact.size
        merged = np.concatenate((self.values, exact))
        if merged.size > self.size:
            merged = np.partition(merged, merged.size - self.size)[merged.size - self.size:]
        self.values = merged
        if self.values.size == self.size:
            self.bound = max(self.bound, float(self.values.min()))


def _as_fraction(fpr) -> Fraction:
    # a float is taken as the decimal it prints as (1e-9, not its binary neighbour)
    return fpr if isinstance(fpr, Fraction) else Fraction(repr(fpr) if isinstance(fpr, float) else fpr)


@dataclass(frozen=True)
class PairCounts:
    n_probes: int
    n_distractors: int
    n_identities: int
    n_positive: int
    n_negative: int
    false_accepts: int          # k = floor(FPR * n_negative)

    @property
    def every_pair(self) -> bool:
        return self.false_accepts >= self.n_negative


def count_pairs(labels, fpr) -> PairCounts:
    """The pair counts of labels [N] and the FPR; a ValueError says why labels cannot be evaluated."""
    labels = np.asarray(labels).reshape(-1)
    fpr = _as_fraction(fpr)
    if not 0 <= fpr <= 1:
        raise ValueError(f"the FPR must lie in [0, 1], got {float(fpr)}")
    if (labels < -1).any():
        raise ValueError("labels must be identities >= 0 or -1 (distractor)")
    probe_labels = labels[labels >= 0]
    counts = np.unique(probe_labels, return_counts=True)[1].astype(np.int64)
    n_probes, n_distractors = int(probe_labels.size), int(labels.size - probe_labels.size)
    n_positive = int((counts * (counts - 1) // 2).sum())
    if n_positive == 0:
        raise ValueError("no identity has two probe images: there is no positive pair")
    n_negative = n_probes * (n_probes - 1) // 2 - n_positive + n_probes * n_distractors
    if n_negative == 0:
        raise ValueError("one identity and no distractor: there is no negative pair")
    return PairCounts(n_probes, n_distractors, int(counts.size), n_positive, n_negative,
                      int(fpr * n_negative))  # floor: both are non-negative


def check_kept(counts: PairCounts) -> None:
    """The k+1 highest negative scores are kept in memory: at most _MAX_KEPT of them."""
    if not counts.every_pair and counts.false_accepts + 1 > _MAX_KEPT:
        raise ValueError(f"the FPR over {counts.n_negative:,} negative pairs keeps the {counts.false_accepts + 1:,} "
                         f"highest scores; at most {_MAX_KEPT:,} are kept: use a smaller FPR")


def evaluate_deepglint(features, labels, fpr=Fraction(1, 10 ** 9), *, device="cpu", column_chunk: int | None = None,
                       tile_elements: int | None = None, progress: bool = False) -> DeepGlintResult:
    """TPR at `fpr` and rank-1 of features [N, D] (an array, a memory map or a FeatureBin, read a chunk
    at a time) with labels [N] (identity >= 0 for a probe, -1 for a distractor)."""
    device = resolve_device(device)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(features) != labels.size:
        raise ValueError(f"{len(features)} feature rows for {labels.size} labels")
    fpr = _as_fraction(fpr)
    plan = count_pairs(labels, fpr)
    check_kept(plan)
    probe_rows, distractor_rows = np.flatnonzero(labels >= 0), np.flatnonzero(labels == -1)
    n_probes, n_distractors = plan.n_probes, plan.n_distractors
    _, identity, counts = np.unique(labels[probe_rows], return_inverse=True, return_counts=True)
    n_positive, n_negative, false_accepts, every_pair = plan.n_positive, plan.n_negative, plan.false_accepts, \
        plan.every_pair

    probe_raw = _read_rows(features, probe_rows)
    probe_norms = _norms(probe_raw, probe_rows)
    dim = probe_raw.shape[1]
    margin = float32_error_bound(dim)

    positives, trial_query, trial_score = [], [], []
    order = np.argsort(identity, kind="stable")
    for members in np.split(order, np.cumsum(counts)[:-1]):
        if members.size < 2:
            continue
        unit = _unit64(probe_raw[members], probe_norms[members])
        scores = unit @ unit.T
        positives.append(scores[np.triu_indices(members.size, 1)])
        others = ~np.eye(members.size, dtype=bool)
        trial_query.append(np.broadcast_to(members[:, None], scores.shape)[others])
        trial_score.append(scores[others])
    positives, trial_query, trial_score = (np.concatenate(parts) for parts in (positives, trial_query, trial_score))

    chunk = column_chunk or _COLUMN_CHUNK[device.type]
    tile_rows = max(1, (tile_elements or _TILE_ELEMENTS[device.type]) // chunk)
    highest = None if every_pair else _HighestScores(false_accepts + 1, margin)
    with torch.no_grad(), exact_float32_matmul():
        probes = torch.empty((n_probes, dim), dtype=torch.float32, device=device)
        for start in range(0, n_probes, _UNIT_ROWS):
            stop = min(n_probes, start + _UNIT_ROWS)
            unit = _unit64(probe_raw[start:stop], probe_norms[start:stop]).astype(np.float32)
            probes[start:stop] = torch.from_numpy(unit).to(device)
        probe_identity = torch.from_numpy(identity.astype(np.int64)).to(device)
        best = torch.full((n_probes,), -np.inf, device=device)

        def distractor_chunks(description):
            for start in tqdm(range(0, n_distractors, chunk), desc=description, unit="chunk", disable=not progress,
                              leave=False):
                rows = distractor_rows[start:start + chunk]
                raw = _read_rows(features, rows)
                norms = _norms(raw, rows)
                yield raw, norms, torch.from_numpy(_unit64(raw, norms).astype(np.float32)).to(device)

        if highest is not None:  # probe x probe: i < j, different identities
            for column_start in tqdm(range(0, n_probes, chunk), desc="probe pairs", unit="chunk", disable=not progress,
                                     leave=False):
                column_stop = min(n_probes, column_start + chunk)
                columns = torch.arange(column_start, column_stop, device=device)
                for start in range(0, column_stop - 1, tile_rows):
                    stop = min(column_stop - 1, start + tile_rows)
                    rows = torch.arange(start, stop, device=device)
                    scores = probes[start:stop] @ probes[column_start:column_stop].T
                    same = probe_identity[start:stop, None] == probe_identity[None, column_start:column_stop]
                    scores.masked_fill_((rows[:, None] >= columns[None, :]) | same, -np.inf)
                    highest.offer(scores, scores.amax(dim=1), lambda i, j, start=start, first=column_start:
                                  _pair_scores(probe_raw, probe_norms, start + i, probe_raw, probe_norms, first + j))

        for raw, norms, columns in distractor_chunks("distractors"):  # probe x distractor
            for start in range(0, n_probes, tile_rows):
                stop = min(n_probes, start + tile_rows)
                scores = probes[start:stop] @ columns.T
                row_max = scores.amax(dim=1)
                best[start:stop] = torch.maximum(best[start:stop], row_max)
                if highest is not None:
                    highest.offer(scores, row_max, lambda i, j, start=start, raw=raw, norms=norms:
                                  _pair_scores(probe_raw, probe_norms, start + i, raw, norms, j))

        threshold = -np.inf if highest is None else float(highest.values.min())
        tpr = int((positives > threshold).sum()) / n_positive

        best = best.cpu().numpy().astype(np.float64)
        surely_right = trial_score > best[trial_query] + margin
        surely_wrong = trial_score <= best[trial_query] - margin
        unsure = ~(surely_right | surely_wrong)
        recheck = np.unique(trial_query[unsure])
        if recheck.size:  # their best distractor again, in float64
            exact_best = np.full(n_probes, -np.inf)
            cuts = torch.tensor([_float32_below(value) for value in best[recheck] - 2 * margin], device=device)
            recheck_probes = probes[torch.from_numpy(recheck).to(device)]
            for raw, norms, columns in distractor_chunks("rank-1 recheck"):
                for start in range(0, recheck.size, tile_rows):
                    stop = min(recheck.size, start + tile_rows)
                    hits = recheck_probes[start:stop] @ columns.T >= cuts[start:stop, None]
                    hit_rows, hit_columns = torch.nonzero(hits, as_tuple=True)
                    hit_rows, hit_columns = recheck[start + hit_rows.cpu().numpy()], hit_columns.cpu().numpy()
                    np.maximum.at(exact_best, hit_rows, _pair_scores(probe_raw, probe_norms, hit_rows, raw, norms,
                                                                     hit_columns))
            surely_right |= unsure & (trial_score > exact_best[trial_query])
    return DeepGlintResult(
        fpr=format(float(fpr), "g"), tpr=tpr, threshold=threshold, false_accepts=false_accepts,
        rank1=int(surely_right.sum()) / trial_score.size, n_probes=int(n_probes), n_identities=int(counts.size),
        n_distractors=int(n_distractors), n_positive_pairs=n_positive, n_negative_pairs=int(n_negative),
        n_trials=int(trial_score.size), dim=int(dim), margin=margin,
        rescored_pairs=0 if highest is None else highest.rescored, rank1_rescored_probes=int(recheck.size))
