"""The fast verification protocols against plain re-statements of their reference code.

`reference_insightface` restates insightface's calculate_roc / calculate_accuracy / calculate_val
(Python loops over the threshold grid, sklearn KFold splits, sklearn normalize), with the FAR
interpolation done the way SciPy's old interp1d(kind='slinear') did it: a degree-1 BSpline on the
knots [f0, f0, f1, ..., fm, fm]. `reference_seed` restates the old eval_lfw.py evaluation_10_fold
(its getThreshold / getAccuracy, vectorised over the 20,001 thresholds with broadcasting). Both must
agree with evaluation.verification to the last bit on fold accuracies and thresholds.
"""

import json

import numpy as np
import pytest
from scipy.interpolate import BSpline

from evaluation.thresholds import kfold_bounds, threshold_at_far
from evaluation.verification import evaluate_verification, seed_fold_scores


# ---------------------------------------------------------------- references
def sklearn_kfold(n, n_splits):
    indices = np.arange(n)
    fold_sizes = np.full(n_splits, n // n_splits, dtype=int)
    fold_sizes[: n % n_splits] += 1
    current = 0
    for fold_size in fold_sizes:
        test = indices[current:current + fold_size]
        yield np.setdiff1d(indices, test), test
        current += fold_size


def old_scipy_slinear(x, y, at):
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)(at))


def calculate_accuracy(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    fp = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict_issame), actual_issame))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def calculate_val_far(threshold, dist, actual_issame):
    predict_issame = np.less(dist, threshold)
    true_accept = np.sum(np.logical_and(predict_issame, actual_issame))
    false_accept = np.sum(np.logical_and(predict_issame, np.logical_not(actual_issame)))
    n_same, n_diff = np.sum(actual_issame), np.sum(np.logical_not(actual_issame))
    # The reference divides by zero on a fold without matched (unmatched) pairs; the documented
    # convention, as in calculate_accuracy, is a rate of 0 there.
    return 0.0 if n_same == 0 else float(true_accept) / float(n_same), \
        0.0 if n_diff == 0 else float(false_accept) / float(n_diff)


def reference_insightface(embeddings, issame, flip=None, n_folds=10, far_targets=(1e-3, 1e-4)):
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if flip is not None:
        embeddings = embeddings + np.asarray(flip, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", embeddings, embeddings))
    norms[norms < 10 * np.finfo(np.float64).eps] = 1.0
    embeddings = embeddings / norms[:, None]
    dist = np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)
    issame = np.asarray(issame)

    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((n_folds, len(thresholds)))
    fprs = np.zeros((n_folds, len(thresholds)))
    accuracy, best_thresholds = np.zeros(n_folds), np.zeros(n_folds)
    for fold_idx, (train_set, test_set) in enumerate(sklearn_kfold(len(issame), n_folds)):
        acc_train = np.zeros(len(thresholds))
        for threshold_idx, threshold in enumerate(thresholds):
            _, _, acc_train[threshold_idx] = calculate_accuracy(threshold, dist[train_set], issame[train_set])
        best_threshold_index = np.argmax(acc_train)
        for threshold_idx, threshold in enumerate(thresholds):
            tprs[fold_idx, threshold_idx], fprs[fold_idx, threshold_idx], _ = calculate_accuracy(
                threshold, dist[test_set], issame[test_set])
        _, _, accuracy[fold_idx] = calculate_accuracy(thresholds[best_threshold_index], dist[test_set],
                                                      issame[test_set])
        best_thresholds[fold_idx] = thresholds[best_threshold_index]

    # calculate_val for each target; far_train does not depend on the target, so it is computed once.
    val_thresholds = np.arange(0, 4, 0.001)
    val, far = {t: np.zeros(n_folds) for t in far_targets}, {t: np.zeros(n_folds) for t in far_targets}
    for fold_idx, (train_set, test_set) in enumerate(sklearn_kfold(len(issame), n_folds)):
        far_train = np.zeros(len(val_thresholds))
        for threshold_idx, threshold in enumerate(val_thresholds):
            _, far_train[threshold_idx] = calculate_val_far(threshold, dist[train_set], issame[train_set])
        for far_target in far_targets:
            if np.max(far_train) >= far_target:
                threshold = old_scipy_slinear(far_train, val_thresholds, far_target)
            else:
                threshold = 0.0
            val[far_target][fold_idx], far[far_target][fold_idx] = calculate_val_far(
                threshold, dist[test_set], issame[test_set])
    tar = {t: (np.mean(val[t]), np.std(val[t]), np.mean(far[t])) for t in far_targets}
    return accuracy, best_thresholds, np.mean(tprs, 0), np.mean(fprs, 0), tar


def get_accuracy(scores, flags, threshold):
    p = np.sum(scores[flags == 1] > threshold)
    n = np.sum(scores[flags == -1] < threshold)
    return 1.0 * (p + n) / len(scores)


def get_threshold(scores, flags, thr_num):
    thresholds = np.arange(-thr_num, thr_num + 1) * 1.0 / thr_num
    # getAccuracy at every threshold, broadcast instead of the Python loop.
    p = np.sum(scores[flags == 1][None, :] > thresholds[:, None], 1)
    n = np.sum(scores[flags == -1][None, :] < thresholds[:, None], 1)
    accuracys = 1.0 * (p + n) / len(scores)
    return np.mean(thresholds[np.squeeze(accuracys == np.max(accuracys))])


def reference_seed_scores(feature_ls, feature_rs, val_fold):
    mu = np.expand_dims(np.mean(np.concatenate((feature_ls[val_fold, :], feature_rs[val_fold, :]), 0), 0), 0)
    ls, rs = feature_ls - mu, feature_rs - mu
    ls = ls / np.expand_dims(np.sqrt(np.sum(np.power(ls, 2), 1)), 1)
    rs = rs / np.expand_dims(np.sqrt(np.sum(np.power(rs, 2), 1)), 1)
    return np.sum(np.multiply(ls, rs), 1)


def reference_seed(embeddings, issame, flip=None, n_folds=10):
    features = np.asarray(embeddings)
    if flip is not None:
        features = np.concatenate((features, np.asarray(flip)), 1)
    feature_ls, feature_rs = features[0::2], features[1::2]
    flags = np.where(np.asarray(issame), 1, -1)
    fold = np.zeros(len(flags), dtype=int)
    for i, (_, test) in enumerate(sklearn_kfold(len(flags), n_folds)):
        fold[test] = i
    accs, thresholds = np.zeros(n_folds), np.zeros(n_folds)
    for i in range(n_folds):
        val_fold, test_fold = fold != i, fold == i
        scores = reference_seed_scores(feature_ls, feature_rs, val_fold)
        thresholds[i] = get_threshold(scores[val_fold], flags[val_fold], 10000)
        accs[i] = get_accuracy(scores[test_fold], flags[test_fold], thresholds[i])
    return accs, thresholds


# ---------------------------------------------------------------- inputs
def random_set(n_pairs, dim=32, seed=0, dtype=np.float32, separation=1.0):
    """Pairs whose second image is the first plus noise when matched, an unrelated vector otherwise."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.standard_normal((n_pairs, dim))
    other = rng.standard_normal((n_pairs, dim))
    second = np.where(issame[:, None], first + other / max(separation, 1e-9), other)
    embeddings = np.empty((2 * n_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    flip = embeddings + 0.3 * rng.standard_normal(embeddings.shape)
    return embeddings.astype(dtype), flip.astype(dtype), issame


def quarter_vectors(count, rng, dim=16):
    """Unit vectors with every entry ±0.25: norms are exactly 1, dot products exact multiples of 1/8."""
    return rng.choice([-0.25, 0.25], size=(count, dim)).astype(np.float32)


def grid_tie_set(n_pairs=600, seed=1):
    """Squared distances and cosines that are exact multiples of 1/4 and 1/8, all of which sit exactly
    on the grid thresholds, with every value shared by many pairs. Each pair (v, w) has a partner pair
    (-v, -w) in its fold, so the mean feature over any folds is exactly zero and the seed protocol's
    centring and normalisation leave the vectors unchanged."""
    rng = np.random.default_rng(seed)
    half = quarter_vectors(n_pairs, rng)
    # a few distinct partners per pair keep the distinct-score count small: heavy ties
    partners = half * np.where(rng.random((n_pairs, 16)) < 0.2, -1, 1).astype(np.float32)
    embeddings = np.empty((2 * n_pairs, 16), np.float32)
    issame = np.empty(n_pairs, bool)
    for k in range(0, n_pairs, 2):
        v, w = half[k], partners[k]
        same = bool(rng.random() < 0.5)
        embeddings[2 * k], embeddings[2 * k + 1] = v, w
        embeddings[2 * k + 2], embeddings[2 * k + 3] = -v, -w
        issame[k] = issame[k + 1] = same
    return embeddings, issame


# ---------------------------------------------------------------- comparisons
def assert_insightface_matches(embeddings, issame, flip=None, n_folds=10):
    accuracy, thresholds, tpr, fpr, tar = reference_insightface(embeddings, issame, flip, n_folds)
    result = evaluate_verification(embeddings, issame, flip, protocol="insightface", n_folds=n_folds)
    np.testing.assert_array_equal(result.fold_accuracies, accuracy)
    np.testing.assert_array_equal(result.thresholds, thresholds)
    np.testing.assert_array_equal(result.roc.tpr, tpr)
    np.testing.assert_array_equal(result.roc.fpr, fpr)
    assert result.accuracy_mean == np.mean(accuracy) and result.accuracy_std == np.std(accuracy)
    for far_target, (val_mean, val_std, far_mean) in tar.items():
        assert result.tar_at_far[far_target] == val_mean
        assert result.tar_std_at_far[far_target] == val_std
        assert result.far_at_far[far_target] == far_mean
    return result


def assert_seed_matches(embeddings, issame, flip=None, n_folds=10):
    accuracy, thresholds = reference_seed(embeddings, issame, flip, n_folds)
    result = evaluate_verification(embeddings, issame, flip, protocol="seed", n_folds=n_folds)
    np.testing.assert_array_equal(result.fold_accuracies, accuracy)
    np.testing.assert_array_equal(result.thresholds, thresholds)
    return result


@pytest.mark.parametrize("use_flip", [False, True])
def test_insightface_random_embeddings(use_flip):
    embeddings, flip, issame = random_set(600, seed=3)
    result = assert_insightface_matches(embeddings, issame, flip if use_flip else None)
    assert 0.6 < result.accuracy_mean < 1.0


@pytest.mark.parametrize("use_flip", [False, True])
def test_seed_random_embeddings(use_flip):
    embeddings, flip, issame = random_set(600, seed=4)
    result = assert_seed_matches(embeddings, issame, flip if use_flip else None)
    assert 0.6 < result.accuracy_mean < 1.0
    # float64 input stays float64 in the seed protocol and must match too
    assert_seed_matches(embeddings.astype(np.float64), issame, flip.astype(np.float64) if use_flip else None)


def test_scores_tie_and_sit_on_grid_thresholds():
    embeddings, issame = grid_tie_set()
    # the premise: distances are grid values and repeat
    normed = embeddings.astype(np.float64)
    dist = np.sum((normed[0::2] - normed[1::2]) ** 2, 1)
    assert np.isin(dist, np.arange(0, 4, 0.01)).all() and len(np.unique(dist)) < 20
    result = assert_insightface_matches(embeddings, issame)
    assert result.accuracy_mean < 1.0

    # seed: the centring is exactly zero, so the scores are the exact cosines, on the 1e-4 grid
    train = np.ones(len(issame), bool)
    train[:60] = False
    scores = reference_seed_scores(embeddings[0::2], embeddings[1::2], train).astype(np.float64)
    assert np.isin(scores, np.arange(-10000, 10001) * 1.0 / 10000).all() and len(np.unique(scores)) < 20
    assert_seed_matches(embeddings, issame)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_seed_scores_bit_identical_at_full_width(dtype):
    # 1,024-d (512-d features + mirrored), N not a multiple of the 512-row blocks
    rng = np.random.default_rng(10)
    left, right = (rng.standard_normal((1100, 1024)).astype(dtype) + 0.3 for _ in range(2))
    features = np.concatenate((left, right), 0)
    untouched = features.copy()
    for start, stop in [kfold_bounds(1100, 10)[k] for k in (0, 4, 9)]:
        train = np.ones(1100, bool)
        train[start:stop] = False
        np.testing.assert_array_equal(seed_fold_scores(features, start, stop),
                                      reference_seed_scores(left, right, train))
    np.testing.assert_array_equal(features, untouched)


def test_all_matched_and_all_unmatched_folds():
    embeddings, flip, issame = random_set(600, seed=5)
    issame[:60] = True      # fold 0: only matched pairs
    issame[60:120] = False  # fold 1: only unmatched pairs
    insightface = assert_insightface_matches(embeddings, issame, flip)
    seed = assert_seed_matches(embeddings, issame, flip)
    assert insightface.fold_accuracies.shape == seed.fold_accuracies.shape == (10,)


@pytest.mark.parametrize("n_pairs", [603, 597])
def test_pair_count_not_divisible_by_ten(n_pairs):
    assert [b - a for a, b in kfold_bounds(n_pairs, 10)][:3] == [n_pairs // 10 + 1] * 3
    embeddings, flip, issame = random_set(n_pairs, seed=6)
    assert_insightface_matches(embeddings, issame, flip)
    assert_seed_matches(embeddings, issame, flip)


def test_near_perfect_separation():
    embeddings, flip, issame = random_set(600, seed=7, separation=8.0)
    insightface = assert_insightface_matches(embeddings, issame, flip)
    seed = assert_seed_matches(embeddings, issame, flip)
    assert insightface.accuracy_mean > 0.99 and seed.accuracy_mean > 0.99


def test_kfold_bounds_match_sklearn_rule():
    assert kfold_bounds(6000, 10)[3] == (1800, 2400)  # the old LFW rule fold = i // 600
    assert kfold_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    with pytest.raises(ValueError, match="at least one pair"):
        kfold_bounds(5, 10)


def test_threshold_at_far_on_flat_curves_matches_old_scipy():
    thresholds = np.arange(0, 4, 0.001)[:8]
    far = np.array([0.0, 0.0, 0.0, 0.25, 0.25, 0.25, 0.5, 1.0])
    for target in [0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 1.0]:
        assert threshold_at_far(far, thresholds, target) == old_scipy_slinear(far, thresholds, target), target
    # the target on a flat stretch lands on its last threshold, between levels it interpolates
    assert threshold_at_far(far, thresholds, 0.25) == pytest.approx(thresholds[5])
    assert thresholds[5] < threshold_at_far(far, thresholds, 0.3) < thresholds[6]
    # never reached: insightface's fall-back to the first (strictest) threshold
    assert threshold_at_far(far * 0.5, thresholds, 0.9) == 0.0
    # a flat top equal to the target: thresholds[-1], where old SciPy's zero-length knot span gave 0.0
    assert threshold_at_far(np.array([0.0, 0.5, 0.5]), thresholds[:3], 0.5) == thresholds[2]


def test_threshold_at_far_random_curves_match_old_scipy():
    rng = np.random.default_rng(8)
    grid = np.arange(0, 4, 0.001)
    for _ in range(50):
        impostors = np.sort(rng.random(rng.integers(5, 400)) * 4)
        far = np.searchsorted(impostors, grid, side="left") / impostors.size  # flat almost everywhere
        target = float(rng.choice([1e-3, 1e-2, 0.1, far[rng.integers(1, grid.size)]]))
        if far.max() >= target and not (target == far[-1] and far[-2] == far[-1]):
            assert threshold_at_far(far, grid, target) == old_scipy_slinear(far, grid, target)


def test_result_json_and_input_checks():
    embeddings, flip, issame = random_set(100, seed=9)
    for protocol in ("insightface", "seed"):
        record = evaluate_verification(embeddings, issame, flip, protocol=protocol).to_json()
        text = json.dumps(record)
        assert set(json.loads(text)["tar_at_far"]) == {"1e-3", "1e-4"}
        assert len(record["fold_accuracies"]) == 10 and record["protocol"] == protocol
        assert record["xnorm"] == pytest.approx(np.mean(np.linalg.norm(np.r_[embeddings, flip], axis=1)))
    with pytest.raises(ValueError, match="valid: insightface, seed"):
        evaluate_verification(embeddings, issame, protocol="lfw")
    with pytest.raises(ValueError, match=r"\[2N, D\]"):
        evaluate_verification(embeddings[:-1], issame)


def test_roc_png_is_written(tmp_path):
    import cv2
    from evaluation.plot import save_roc_png

    embeddings, flip, issame = random_set(300, seed=11)
    results = [evaluate_verification(embeddings, issame, flip, protocol=p) for p in ("insightface", "seed")]
    path = tmp_path / "roc.png"
    save_roc_png(results, path, labels=["insightface", "seed"])
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 400 and image.std() > 10
    save_roc_png(results[0].roc, tmp_path / "one.png")
    assert (tmp_path / "one.png").stat().st_size > 0
    with pytest.raises(ValueError, match="1 labels for 2 curves"):
        save_roc_png(results, tmp_path / "bad.png", labels=["only one"])
