"""MegaFace Challenge 1 (Kemelmacher-Shlizerman et al., "The MegaFace Benchmark: 1 Million Faces for
Recognition at Scale", CVPR 2016) with the FaceScrub probe set, computed from feature arrays without
the 2016 devkit binary.

Similarity is the cosine of the features: both sets are L2-normalised here in float32 unless
``normalize=False`` (then the caller guarantees unit norms, or wants raw dot products).

Identification (the devkit's rule): every ordered pair (a, b) of distinct probe images of one
identity is a trial in which b is put in a gallery with the n distractors and a is the query; the
trial succeeds at rank k when fewer than k distractors score >= sim(a, b), so at rank 1 exactly when
sim(a, b) is STRICTLY greater than a's best distractor similarity (a tie is a failure). The CMC holds
the success rate at ranks 1..K; rank-1 is its first entry.

Verification: genuine pairs are the unordered pairs of distinct probe images of one identity,
impostor pairs every (probe, distractor) pair, P·n of them; a pair is accepted when its score is
> t. TAR@FAR uses the most permissive threshold whose FAR does not exceed the target: with k =
floor(FAR·P·n) (FAR taken as the decimal it is written as, so 1e-6 is exactly one in a million),
t = the (k+1)-th largest impostor score, which accepts at most k impostors. This is the limit of
the verification protocol's rule (thresholds.threshold_at_far: the largest grid threshold whose FAR
is within the target) when every impostor score is a grid point, where nothing is left to
interpolate. Only the k+1 highest impostor scores decide it, so the search keeps a running top-(k+1)
over all P·n scores (3,531 values for 3,530 probes and 10^6 distractors) instead of storing them.

Distractor subsets: one permutation of the M distractors from ``numpy.random.default_rng(seed)``;
the subset of size n is its first n entries, so the subsets are nested and one pass over the
distractors (in permutation order, cut at every subset size) yields every size's statistics. The
default sizes are those of 10, 100, ..., 10^6 below M, and M. (The devkit draws its own fixed
subsets, so numbers below 10^6 match it in distribution, not draw for draw; at n = M every
distractor is used.)

Memory: the distractors are read one chunk at a time (a np.memmap of 10^6 x 512 float32, 2 GB, is
fine); the working set is about three probes x chunk float32 blocks (256 MiB each on the CPU, 1 GiB on
a GPU) plus the probe x probe scores.

Scores are float32 matrix products (on ``device``, TF32 switched off for the run) and every rank
decision compares float32 scores; products over a chunk of distractors may differ from a whole-matrix
product in the last bit, never for features whose products are exact (as in the tests).

ROC (for plotting): impostor and genuine scores are histogrammed in ``roc_bins`` equal bins over
[-1, 1]; FAR/TAR at each bin's lower edge count the scores in that bin and above. The TAR@FAR numbers
do not use the histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from runtime import resolve_device
from runtime.numeric import exact_float32_matmul

from ..thresholds import RocCurve, far_key

DEFAULT_DISTRACTOR_COUNTS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)
# Elements of one probes x distractors score block: 256 MiB of float32 on the CPU, 1 GiB on a GPU.
_BLOCK_ELEMENTS = {"cpu": 1 << 26, "cuda": 1 << 28}
# Impostor scores kept for TAR@FAR (FAR x P x n + 1): 1e-4 at 3,530 x 10^6 needs 353,001.
_MAX_TAIL = 1 << 24


@dataclass
class MegaFaceResult:
    distractor_counts: list
    cmc: dict                  # {n: success rate at ranks 1..K}
    tar_at_far: dict           # {n: {far: TAR}}
    threshold_at_far: dict     # {n: {far: cosine threshold t, accept score > t}}
    far_reached: dict          # {n: {far: impostors accepted at t / impostor pairs}}
    roc: dict                  # {n: RocCurve} (empty when roc_bins == 0)
    n_probes: int
    n_identities: int
    n_trials: int              # ordered (query, gallery) probe pairs per distractor count
    n_genuine_pairs: int       # unordered genuine pairs for verification
    n_excluded: dict           # {n: distractors of the subset neutralised by a noise list}
    seed: int

    @property
    def rank1(self) -> dict:
        return {n: float(curve[0]) for n, curve in self.cmc.items()}

    def to_json(self, include_roc: bool = False) -> dict:
        record = {
            "distractor_counts": [int(n) for n in self.distractor_counts],
            "rank1": {str(n): v for n, v in self.rank1.items()},
            "cmc": {str(n): [float(v) for v in curve] for n, curve in self.cmc.items()},
            "tar_at_far": {str(n): {far_key(f): float(v) for f, v in d.items()} for n, d in self.tar_at_far.items()},
            "threshold_at_far": {str(n): {far_key(f): float(v) for f, v in d.items()}
                                 for n, d in self.threshold_at_far.items()},
            "far_reached": {str(n): {far_key(f): float(v) for f, v in d.items()} for n, d in self.far_reached.items()},
            "n_probes": self.n_probes, "n_identities": self.n_identities, "n_trials": self.n_trials,
            "n_genuine_pairs": self.n_genuine_pairs,
            "n_excluded": {str(n): int(v) for n, v in self.n_excluded.items()}, "seed": self.seed,
        }
        if include_roc:
            record["roc"] = {str(n): {"fpr": curve.fpr.tolist(), "tpr": curve.tpr.tolist(),
                                      "thresholds": curve.thresholds.tolist()} for n, curve in self.roc.items()}
        return record


def distractor_order(n_distractors: int, seed: int = 0) -> np.ndarray:
    """The permutation whose first n entries are the distractor subset of size n."""
    return np.random.default_rng(seed).permutation(n_distractors)


def default_distractor_counts(n_distractors: int) -> list:
    """The published counts 10, 100, ..., 10^6 below the number of distractors given, then all of them."""
    return [n for n in DEFAULT_DISTRACTOR_COUNTS if n < n_distractors] + [n_distractors]


def _features(array, device, normalize, what, row_ids=None) -> torch.Tensor:
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = np.nonzero(~np.isfinite(array).all(axis=1))[0]
    if bad.size:
        row = int(bad[0]) if row_ids is None else int(row_ids[bad[0]])
        raise ValueError(f"{what} row {row} holds a NaN or infinite value")
    tensor = torch.from_numpy(array).to(device)
    return torch.nn.functional.normalize(tensor, dim=1) if normalize else tensor


def _tail_sizes(n_probes, counts, far_targets):
    """{(n, far): k}: the impostor rank (0-based) whose score is the threshold, k = floor(FAR·P·n)."""
    return {(n, far): int(Fraction(repr(float(far))) * n_probes * n) for n in counts for far in far_targets}


def evaluate_megaface(probe_embeddings, probe_labels, distractor_embeddings, *, distractor_counts=None,
                      excluded_distractors=None, cmc_ranks: int = 10, far_targets=(1e-6,), seed: int = 0,
                      normalize: bool = True, device="cpu", chunk_size: int | None = None,
                      roc_bins: int = 2000) -> MegaFaceResult:
    """Identification (CMC, rank-1) and verification (TAR@FAR, ROC) at each distractor count.

    probe_embeddings [P, D], probe_labels [P] (identity ids), distractor_embeddings [M, D] (an array or
    np.memmap; read chunk by chunk). excluded_distractors: bool [M] of distractors a noise list
    neutralises (see noise.megaface_noise_mask): they stay in every subset and in the
    impostor count but never score above anything, as insightface's far-away feature does.
    """
    device = resolve_device(device)
    labels = np.asarray(probe_labels).reshape(-1)
    n_distractors = len(distractor_embeddings)
    if len(probe_embeddings) != labels.size:
        raise ValueError(f"{len(probe_embeddings)} probe embeddings but {labels.size} probe labels")
    if n_distractors == 0:
        raise ValueError("no distractors given")
    counts = sorted(set(int(n) for n in (distractor_counts or default_distractor_counts(n_distractors))))
    if counts[0] < 1 or counts[-1] > n_distractors:
        raise ValueError(f"distractor counts must lie in 1..{n_distractors} (the distractors given), got {counts}")
    if cmc_ranks < 1:
        raise ValueError(f"cmc_ranks must be >= 1, got {cmc_ranks}")
    far_targets = tuple(float(f) for f in far_targets)
    if any(not 0 < f <= 1 for f in far_targets):
        raise ValueError(f"FAR targets must lie in (0, 1], got {far_targets}")
    excluded = None
    if excluded_distractors is not None:
        excluded = np.asarray(excluded_distractors, dtype=bool).reshape(-1)
        if excluded.size != n_distractors:
            raise ValueError(f"excluded_distractors holds {excluded.size} flags for {n_distractors} distractors")

    with torch.no_grad(), exact_float32_matmul():
        probes = _features(probe_embeddings, device, normalize, "probe")
        n_probes = probes.shape[0]
        same = torch.from_numpy(labels[:, None] == labels[None, :]).to(device)
        same.fill_diagonal_(False)
        probe_scores = probes @ probes.T
        trial_query, trial_gallery = torch.nonzero(same, as_tuple=True)
        if trial_query.numel() == 0:
            raise ValueError("no identity has two probe images: there is no genuine pair to evaluate")
        trial_scores = probe_scores[trial_query, trial_gallery]
        genuine_scores = probe_scores[torch.triu(same, diagonal=1)]

        tail_index = _tail_sizes(n_probes, counts, far_targets)
        tail_size = min(max(tail_index.values()) + 1, n_probes * counts[-1])
        if tail_size > _MAX_TAIL:
            raise ValueError(f"FAR targets {far_targets} need the top {tail_size} impostor scores kept "
                             f"(FAR x probes x distractors); at most {_MAX_TAIL} are: use smaller FARs and "
                             "read larger ones off the ROC")
        block = chunk_size or max(256, _BLOCK_ELEMENTS[device.type] // n_probes)
        snapshots = _scan_distractors(probes, distractor_embeddings, distractor_order(n_distractors, seed),
                                      counts, excluded, device, normalize, block, cmc_ranks, tail_size, roc_bins)

        result = MegaFaceResult(counts, {}, {}, {}, {}, {}, n_probes, int(np.unique(labels).size),
                                int(trial_query.numel()), int(genuine_scores.numel()), {}, seed)
        genuine_sorted = torch.sort(genuine_scores).values
        for n in counts:
            top, tail, impostor_hist, n_excluded = snapshots[n]
            # rank <= k  <=>  the k-th best distractor score is below the genuine score
            success = top[trial_query] < trial_scores[:, None]
            result.cmc[n] = success.double().mean(0).cpu().numpy()
            result.n_excluded[n] = n_excluded
            n_impostors = n_probes * n
            result.tar_at_far[n], result.threshold_at_far[n], result.far_reached[n] = {}, {}, {}
            for far in far_targets:
                k = tail_index[(n, far)]
                threshold = float(tail[k]) if k < n_impostors else float("-inf")
                at = torch.tensor([threshold], device=device)
                accepted = genuine_sorted.numel() - int(torch.searchsorted(genuine_sorted, at, right=True)[0])
                result.tar_at_far[n][far] = accepted / genuine_sorted.numel()
                result.threshold_at_far[n][far] = threshold
                result.far_reached[n][far] = int((tail > threshold).sum()) / n_impostors
            if roc_bins:
                result.roc[n] = _histogram_roc(impostor_hist, genuine_scores, roc_bins, n_impostors)
    return result


def _scan_distractors(probes, distractors, order, counts, excluded, device, normalize, block, cmc_ranks,
                      tail_size, roc_bins):
    """One pass over the distractors in subset order; at each subset size, a snapshot of: the top
    cmc_ranks distractor scores of every probe ([P, K], descending, -inf where fewer), the top
    tail_size impostor scores overall (descending), the impostor-score histogram and the number of
    excluded distractors so far."""
    n_probes = probes.shape[0]
    top = torch.full((n_probes, cmc_ranks), float("-inf"), device=device)
    tail = torch.empty(0, device=device)
    hist = torch.zeros(max(roc_bins, 1), dtype=torch.float64, device=device)
    n_excluded, position, snapshots = 0, 0, {}
    for boundary in counts:
        while position < boundary:
            stop = min(position + block, boundary)
            # the order inside a chunk does not matter; ascending indices read a memmap sequentially
            index = np.sort(order[position:stop])
            chunk = _features(distractors[index], device, normalize, "distractor", row_ids=index)
            scores = probes @ chunk.T
            dropped = np.nonzero(excluded[index])[0] if excluded is not None else np.empty(0, np.int64)
            if dropped.size:
                # Never above anything; they still count as impostor pairs, as in the devkit run.
                scores[:, torch.from_numpy(dropped).to(device)] = float("-inf")
                n_excluded += int(dropped.size)
            top = torch.topk(torch.cat([top, torch.topk(scores, min(cmc_ranks, scores.shape[1]), dim=1).values], 1),
                             cmc_ranks, dim=1).values
            if tail.numel() == tail_size:
                candidates = scores[scores > tail[-1]]
            else:
                candidates = scores.reshape(-1)
            if candidates.numel():
                merged = torch.cat([tail, candidates])
                tail = torch.topk(merged, min(tail_size, merged.numel())).values
            if roc_bins:
                # last use of the scores: clamp in place (histc drops values outside its range)
                hist += torch.histc(scores.clamp_(-1.0, 1.0), bins=roc_bins, min=-1.0, max=1.0).double()
                # the clamp put the excluded pairs' -inf into the lowest bin: take them out again
                hist[0] -= n_probes * dropped.size
            position = stop
        # top and tail are replaced, never modified, by the next chunk; the histogram is added to
        snapshots[boundary] = (top, tail, hist.clone(), n_excluded)
    return snapshots


def _histogram_roc(impostor_hist, genuine_scores, roc_bins, n_impostors) -> RocCurve:
    genuine_hist = torch.histc(genuine_scores.clamp(-1.0, 1.0), bins=roc_bins, min=-1.0, max=1.0).double()
    # scores at or above each bin's lower edge: reversed cumulative sums
    impostors_above = torch.flip(torch.cumsum(torch.flip(impostor_hist, [0]), 0), [0]).cpu().numpy()
    genuine_above = torch.flip(torch.cumsum(torch.flip(genuine_hist, [0]), 0), [0]).cpu().numpy()
    edges = np.linspace(-1.0, 1.0, roc_bins + 1)[:-1]
    return RocCurve(impostors_above / n_impostors, genuine_above / genuine_scores.numel(), edges)
