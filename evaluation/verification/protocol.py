"""Pair-verification accuracy (LFW, CFP-FP, AgeDB-30, ... ) under two published protocols, computed
exactly as their reference code does but by counting over sorted scores instead of looping over the
threshold grid in Python.

Input: ``embeddings`` [2N, D] (pair i is rows 2i and 2i+1), optionally ``embeddings_flip`` [2N, D]
(features of the horizontally mirrored images), ``issame`` bool [N]. Pairs are split into contiguous
folds as sklearn's ``KFold(n_splits, shuffle=False)`` (see ``evaluation.thresholds.kfold_bounds``).

``protocol="insightface"`` -- insightface's ``recognition/arcface_torch/eval/verification.py``
(Sandberg's facenet ``lfw.py`` lineage; the numbers ArcFace and most papers report):
  emb = f(x) + f(mirror x) (or f(x)), in float64, L2-normalised with sklearn ``normalize`` semantics
  (row norm from ``einsum('ij,ij->i')``, norms below 10·eps left at 1); dist = squared L2 distance of a
  pair; thresholds ``np.arange(0, 4, 0.01)``; a pair is predicted "same" when ``dist < t``; per fold
  the threshold is the FIRST grid value with the best accuracy on the other folds (``np.argmax``).
  ROC: test-fold TPR/FPR at each grid threshold, averaged over folds. TAR@FAR: ``calculate_val`` on
  ``np.arange(0, 4, 0.001)`` with the FAR rule of ``evaluation.thresholds.threshold_at_far``. xnorm:
  the mean L2 norm of every un-normalised feature row, of the plain AND the mirrored images (insightface's
  ``_xnorm`` loop over ``embeddings_list``); equal to the reference up to float summation order.

``protocol="seed"`` -- the old repository's ``eval_lfw.py`` (wujiyang/Face_Pytorch, SphereFace-style
``evaluation_10_fold``; its README table), in the embeddings' own float dtype (float32 features
stay float32, as they did in its .mat file; other dtypes become float64):
  feature = concat(f(x), f(mirror x)) (or f(x)); per test fold, mu = mean feature over both images of
  every pair in the other folds, subtracted from every feature, which is then L2-normalised; score =
  cosine. Thresholds ``np.arange(-10000, 10001) * 1.0 / 10000`` (20,001 values, -1 and 1 included:
  its ``getThreshold(..., thrNum=10000)``); a pair counts as correct when matched with score > t or
  unmatched with score < t (a score equal to t is wrong either way); the fold threshold is the MEAN of
  all grid values reaching the best training accuracy. ROC (score > t accepted) and TAR@FAR are not
  part of that code; we compute them with the insightface definitions on the per-fold scores, taking
  ``-score`` as the distance on the same grid, so a threshold t here accepts score > t. xnorm as above.
  (Other SphereFace ports differ: CosFace_pytorch's lfw_eval.py uses ``np.arange(-1.0, 1.0, 0.005)``
  and keeps the LAST best threshold; the seed repository's own code is the one reproduced here.)
Comparisons run in float64 (numpy 2 promotes float32 scores against float64 thresholds; numpy 1 would
have rounded the threshold to float32 instead).

Speed: each fold's threshold search is a sort plus ``np.searchsorted`` over the grid (strict "<" and
">" counts come from the left and right insertion points). What remains is the feature arithmetic,
done with the references' own float operations, row block by row block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from runtime import UnknownName, l2_normalize

from ..thresholds import RocCurve, count_above, count_below, far_key, kfold_bounds, threshold_at_far

PROTOCOLS = ("insightface", "seed")
FAR_TARGETS = (1e-3, 1e-4)

_INSIGHTFACE_ACCURACY_GRID = np.arange(0, 4, 0.01)
_INSIGHTFACE_VAL_GRID = np.arange(0, 4, 0.001)
_SEED_GRID = np.arange(-10000, 10000 + 1) * 1.0 / 10000


@dataclass
class VerificationResult:
    protocol: str
    fold_accuracies: np.ndarray          # fractions in [0, 1], one per fold
    thresholds: np.ndarray               # per fold: squared-L2 distance (insightface) or cosine (seed)
    accuracy_mean: float
    accuracy_std: float                  # np.std (population), as both references print
    xnorm: float
    tar_at_far: dict                     # {far_target: mean TAR over test folds}
    tar_std_at_far: dict                 # {far_target: np.std of the per-fold TAR}
    far_at_far: dict                     # {far_target: mean FAR reached on the test folds}
    roc: RocCurve
    threshold_kind: str = ""

    def to_json(self) -> dict:
        def keyed(values):
            return {far_key(far): float(v) for far, v in values.items()}
        return {
            "protocol": self.protocol,
            "accuracy_mean": float(self.accuracy_mean),
            "accuracy_std": float(self.accuracy_std),
            "fold_accuracies": [float(a) for a in self.fold_accuracies],
            "thresholds": [float(t) for t in self.thresholds],
            "threshold_kind": self.threshold_kind,
            "xnorm": float(self.xnorm),
            "tar_at_far": keyed(self.tar_at_far),
            "tar_std_at_far": keyed(self.tar_std_at_far),
            "far_at_far": keyed(self.far_at_far),
        }


def evaluate_verification(embeddings, issame, embeddings_flip=None, protocol: str = "insightface",
                          n_folds: int = 10) -> VerificationResult:
    """Accuracy, thresholds, ROC and TAR@FAR of one verification set under `protocol`."""
    if protocol not in PROTOCOLS:
        raise UnknownName("protocol", protocol, PROTOCOLS)
    embeddings = np.asarray(embeddings)
    issame = np.asarray(issame).astype(bool).reshape(-1)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * issame.size or issame.size == 0:
        raise ValueError(f"embeddings must be [2N, D] for N = len(issame) = {issame.size} pairs, "
                         f"got shape {embeddings.shape}")
    if embeddings_flip is not None:
        embeddings_flip = np.asarray(embeddings_flip)
        if embeddings_flip.shape != embeddings.shape:
            raise ValueError(f"embeddings_flip must match embeddings' shape {embeddings.shape}, "
                             f"got {embeddings_flip.shape}")
    if protocol == "seed" and n_folds < 2:
        raise ValueError(f"the seed protocol needs n_folds >= 2 (mu comes from the other folds), got {n_folds}")
    folds = kfold_bounds(issame.size, n_folds)
    if protocol == "insightface":
        return _insightface(embeddings, embeddings_flip, issame, folds)
    return _seed(embeddings, embeddings_flip, issame, folds)


def _insightface_distances(embeddings, embeddings_flip, block_pairs: int = 256):
    """(squared L2 distance of every pair, xnorm) as insightface computes them, in float64, pair block
    by pair block so that the arrays stay in cache: every step is per row, so blocks change no bit."""
    n_pairs = embeddings.shape[0] // 2
    dist = np.empty(n_pairs)
    norm_sum, n_norms = 0.0, 0
    for start in range(0, n_pairs, block_pairs):
        rows = slice(2 * start, 2 * min(start + block_pairs, n_pairs))
        features = np.asarray(embeddings[rows], dtype=np.float64)
        norms = [np.sqrt(np.einsum("ij,ij->i", features, features))]
        if embeddings_flip is not None:
            flipped = np.asarray(embeddings_flip[rows], dtype=np.float64)
            norms.append(np.sqrt(np.einsum("ij,ij->i", flipped, flipped)))
            features = features + flipped
        norm_sum += float(np.sum(norms))
        n_norms += sum(n.size for n in norms)
        features = l2_normalize(features)
        dist[start:start + features.shape[0] // 2] = np.sum(np.square(np.subtract(features[0::2], features[1::2])), 1)
    return dist, norm_sum / n_norms


class _FoldScores(NamedTuple):
    """One fold's distances, sorted (NaNs last), split by test/train and matched/unmatched."""
    test_pos: np.ndarray
    test_neg: np.ndarray
    train_pos: np.ndarray
    train_neg: np.ndarray


def _split_sorted(dist: np.ndarray, issame: np.ndarray, start: int, stop: int, train_is_all: bool):
    test = np.zeros(dist.size, dtype=bool)
    test[start:stop] = True
    train = np.ones_like(test) if train_is_all else ~test
    return _FoldScores(np.sort(dist[test & issame]), np.sort(dist[test & ~issame]),
                       np.sort(dist[train & issame]), np.sort(dist[train & ~issame]))


def _insightface(embeddings, embeddings_flip, issame, folds) -> VerificationResult:
    dist, xnorm = _insightface_distances(embeddings, embeddings_flip)
    # LFold with one split trains and tests on everything.
    per_fold = [_split_sorted(dist, issame, a, b, train_is_all=len(folds) == 1) for a, b in folds]
    grid = _INSIGHTFACE_ACCURACY_GRID

    accuracies, thresholds, tprs, fprs = [], [], [], []
    for fold in per_fold:
        # dist < t predicts "same": correct = matched below t + unmatched at or above t.
        train_correct = (count_below(fold.train_pos, grid)
                         + fold.train_neg.size - count_below(fold.train_neg, grid))
        best = int(np.argmax(train_correct))
        tp = count_below(fold.test_pos, grid)
        fp = count_below(fold.test_neg, grid)
        n_test = fold.test_pos.size + fold.test_neg.size
        accuracies.append(float(tp[best] + fold.test_neg.size - fp[best]) / n_test)
        thresholds.append(grid[best])
        tprs.append(tp / fold.test_pos.size if fold.test_pos.size else np.zeros(grid.size))
        fprs.append(fp / fold.test_neg.size if fold.test_neg.size else np.zeros(grid.size))
    roc = RocCurve(np.mean(np.array(fprs), 0), np.mean(np.array(tprs), 0), grid.copy())

    return _result("insightface", accuracies, thresholds, xnorm, per_fold, _INSIGHTFACE_VAL_GRID, roc,
                   "squared_l2_distance")


def _result(protocol, accuracies, thresholds, xnorm, per_fold, val_grid, roc, threshold_kind) -> VerificationResult:
    """Fold results plus TAR at each FAR target (mean and std over folds), as one VerificationResult."""
    tar, tar_std, far_reached = {}, {}, {}
    for far_target in FAR_TARGETS:
        vals, fars = _val_far_per_fold(per_fold, val_grid, far_target)
        tar[far_target], tar_std[far_target], far_reached[far_target] = (
            float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars)))
    accuracies = np.array(accuracies)
    return VerificationResult(protocol, accuracies, np.array(thresholds), float(np.mean(accuracies)),
                              float(np.std(accuracies)), xnorm, tar, tar_std, far_reached, roc,
                              threshold_kind=threshold_kind)


def _val_far_per_fold(per_fold, grid, far_target):
    """insightface's calculate_val on distances (accept dist < t): per fold the threshold reaching
    `far_target` on the training folds, then the test fold's TAR and FAR at it. A fold without matched
    (unmatched) pairs scores TAR (FAR) 0, where the reference would divide by zero."""
    vals, fars = [], []
    for fold in per_fold:
        if fold.train_neg.size:
            far_train = count_below(fold.train_neg, grid) / fold.train_neg.size
        else:
            far_train = np.zeros(grid.size)
        threshold = threshold_at_far(far_train, grid, far_target)
        accepted_pos = int(count_below(fold.test_pos, threshold))
        accepted_neg = int(count_below(fold.test_neg, threshold))
        vals.append(accepted_pos / fold.test_pos.size if fold.test_pos.size else 0.0)
        fars.append(accepted_neg / fold.test_neg.size if fold.test_neg.size else 0.0)
    return np.array(vals), np.array(fars)


def _seed_features(embeddings, embeddings_flip) -> np.ndarray:
    """[left images; right images] ([2N, D'] contiguous, D' = 2D with mirrored features): rows 0..N-1
    hold the first image of every pair, as concat(f(x), f(mirror x))."""
    dtype = embeddings.dtype if embeddings.dtype in (np.float32, np.float64) else np.float64
    n_pairs, dim = embeddings.shape[0] // 2, embeddings.shape[1]
    sources = [embeddings] if embeddings_flip is None else [embeddings, embeddings_flip]
    features = np.empty((2 * n_pairs, dim * len(sources)), dtype=dtype)
    for column, source in enumerate(sources):
        features[:n_pairs, column * dim:(column + 1) * dim] = source[0::2]
        features[n_pairs:, column * dim:(column + 1) * dim] = source[1::2]
    return features


def _mean_feature_norm(embeddings, embeddings_flip) -> float:
    arrays = [embeddings] if embeddings_flip is None else [embeddings, embeddings_flip]
    norms = [np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64)) for a in arrays]
    return float(np.mean(np.concatenate(norms)))


def _sequential_row_sum(features: np.ndarray, blocks) -> np.ndarray:
    """Sum of the rows of the contiguous `blocks` [(start, stop)] of `features`, added one row after
    another in block order: bit for bit numpy's axis-0 sum of their concatenation (numpy reduces
    axis 0 of a C-ordered array row by row), without copying the rows. The running total enters a
    block through its first row, which is restored afterwards."""
    total = None
    for start, stop in blocks:
        if stop <= start:
            continue
        if total is None:
            total = np.add.reduce(features[start:stop], 0)
            continue
        first_row = features[start].copy()
        features[start] = total + first_row
        try:
            total = np.add.reduce(features[start:stop], 0)
        finally:
            features[start] = first_row
    return total


def seed_fold_scores(features: np.ndarray, test_start: int, test_stop: int, block_rows: int = 512) -> np.ndarray:
    """The old eval_lfw.py's scores for one test fold [test_start, test_stop): mu = np.mean of the
    concatenated left and right features of the other pairs; every feature minus mu, divided by its
    L2 norm; score = sum of the products. `features` is [left; right] as from _seed_features (its
    rows are touched and restored while mu is summed). The same float operations as the reference's
    whole-array expressions, row block by row block so that they run in cache: every one of them is
    elementwise or a per-row reduction, whose result does not depend on the other rows."""
    n_pairs = features.shape[0] // 2
    blocks = [(0, test_start), (test_stop, n_pairs + test_start), (n_pairs + test_stop, 2 * n_pairs)]
    n_train_rows = 2 * (n_pairs - (test_stop - test_start))
    mu = _sequential_row_sum(features, blocks) / features.dtype.type(n_train_rows)
    scores = np.empty(n_pairs, dtype=features.dtype)
    left_buffer = np.empty((block_rows, features.shape[1]), features.dtype)
    right_buffer, product = np.empty_like(left_buffer), np.empty_like(left_buffer)
    for start in range(0, n_pairs, block_rows):
        rows = min(block_rows, n_pairs - start)
        left = np.subtract(features[start:start + rows], mu, out=left_buffer[:rows])
        right = np.subtract(features[n_pairs + start:n_pairs + start + rows], mu, out=right_buffer[:rows])
        for side in (left, right):
            # np.power(x, 2) is computed as x * x
            squares = np.multiply(side, side, out=product[:rows])
            np.divide(side, np.sqrt(np.add.reduce(squares, 1))[:, np.newaxis], out=side)
        scores[start:start + rows] = np.add.reduce(np.multiply(left, right, out=product[:rows]), 1)
    return scores


def _seed(embeddings, embeddings_flip, issame, folds) -> VerificationResult:
    xnorm = _mean_feature_norm(embeddings, embeddings_flip)
    features = _seed_features(embeddings, embeddings_flip)
    grid = _SEED_GRID
    accuracies, thresholds, tprs, fprs, per_fold_distances = [], [], [], [], []
    for start, stop in folds:
        train = np.ones(issame.size, dtype=bool)
        train[start:stop] = False
        # float64 copies: the reference compares the scores against float64 thresholds.
        scores = seed_fold_scores(features, start, stop).astype(np.float64)
        valid = ~np.isnan(scores)  # a NaN score is neither above nor below any threshold
        pos_train = np.sort(scores[train & issame & valid])
        neg_train = np.sort(scores[train & ~issame & valid])
        pos_test = np.sort(scores[~train & issame & valid])
        neg_test = np.sort(scores[~train & ~issame & valid])

        train_correct = count_above(pos_train, grid) + count_below(neg_train, grid)
        threshold = np.mean(grid[train_correct == np.max(train_correct)])
        n_test = stop - start
        correct = int(count_above(pos_test, threshold)) + int(count_below(neg_test, threshold))
        accuracies.append(1.0 * correct / n_test)
        thresholds.append(threshold)

        n_pos_test = int(np.sum(issame[start:stop]))
        n_neg_test = n_test - n_pos_test
        tprs.append(count_above(pos_test, grid) / n_pos_test if n_pos_test else np.zeros(grid.size))
        fprs.append(count_above(neg_test, grid) / n_neg_test if n_neg_test else np.zeros(grid.size))
        # TAR@FAR on distance = -score: "score > t" is "-score < -t"; the grid is symmetric.
        distances = -scores
        per_fold_distances.append(_FoldScores(
            np.sort(distances[~train & issame]), np.sort(distances[~train & ~issame]),
            np.sort(distances[train & issame]), np.sort(distances[train & ~issame])))
    roc = RocCurve(np.mean(np.array(fprs), 0), np.mean(np.array(tprs), 0), grid.copy())

    return _result("seed", accuracies, thresholds, xnorm, per_fold_distances, grid, roc, "cosine")


def raw_pixel_baseline(images: np.ndarray, issame: np.ndarray) -> float:
    """Verification accuracy of cosine similarity between raw pixels (scaled as the network sees
    them, (x / 255 - 0.5) / 0.5) under insightface's 10-fold best-threshold protocol."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) != 2 * len(issame):
        raise ValueError(f"need images [2N, H, W, C] for {len(issame)} pairs, got {images.shape}")
    cosine = np.empty(len(issame))
    for start in range(0, len(issame), 256):  # in chunks: a whole set as float is gigabytes
        flat = images[2 * start:2 * start + 512].reshape(-1, images[0].size)
        flat = l2_normalize(flat.astype(np.float32) / 127.5 - 1.0)
        cosine[start:start + 256] = np.einsum("ij,ij->i", flat[0::2], flat[1::2])
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    # Each pair becomes two unit vectors in the plane at the pair's angle: the protocol sees the
    # same squared distances (2 - 2 cos) without 37,632-dimensional embeddings for every image.
    embeddings = np.zeros((len(images), 2))
    embeddings[0::2, 0] = 1.0
    embeddings[1::2] = np.stack([np.cos(angle), np.sin(angle)], 1)
    return evaluate_verification(embeddings, issame, protocol="insightface").accuracy_mean
