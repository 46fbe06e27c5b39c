"""BLUFR (evaluation/blufr) against plain re-statements of its MATLAB functions EvalROC and OpenSetROC
(Liao's code, 2014-07-22) and of the demo's mean - std report: on random features, on features whose
scores tie everywhere (exact arithmetic), and on every threshold rule (FAR = 0 with and without a
genuine score above the impostors, FAR = 1). Configs are written here with scipy.io.savemat in the
release's layout; bad configs are refused in one line."""

import math
import statistics
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from scipy.io import savemat

from evaluation.blufr import (OPEN_SET_FAR_POINTS, VERIFICATION_FAR_POINTS, evaluate_blufr, matlab_round,
                              open_set_roc, read_blufr_config, verification_roc, write_blufr_config)
from runtime import DataFormatError

SQRT_EPS = math.sqrt(2.0 ** -52)  # MATLAB's sqrt(eps)


# ---------------------------------------------------------------- the MATLAB code, re-stated

def round_half_away(x: float) -> int:
    """MATLAB's round of a double: the exact binary value rounded, halves away from zero."""
    return int(Decimal(x).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def far_points(first: int) -> list:
    """[0, kron(10.^(first:-1), 1:9), 1], 10.^e being the double nearest to 10^e."""
    return [0.0] + [float(f"1e{e}") * j for e in range(first, 0) for j in range(1, 10)] + [1.0]


def thresholds_of(impostor_desc: list, genuine: list, false_alarms: list) -> list:
    n_imp, out = len(impostor_desc), []
    for k in false_alarms:
        if k == 0:
            high = [g for g in genuine if g > impostor_desc[0]]
            out.append((impostor_desc[0] + min(high)) / 2 if high else impostor_desc[0] + SQRT_EPS)
        elif k == n_imp:
            out.append(min(impostor_desc[-1], min(genuine)) - SQRT_EPS)
        else:
            out.append(impostor_desc[k - 1])  # impScore(falseAlarms), 1-based
    return out


def eval_roc_reference(score: np.ndarray, labels: np.ndarray, points: list):
    """EvalROC(score, labels, [], points): (VR, FAR, thresholds)."""
    n = len(labels)
    mask = np.tril(np.ones((n, n), bool), -1)
    binary = labels[:, None] == labels[None, :]
    values, same = score.T[mask.T], binary.T[mask.T]  # score(scoreMask): column-major order
    genuine, impostor = list(values[same]), list(values[~same])
    false_alarms = [round_half_away(f * len(impostor)) for f in points]
    thresholds = thresholds_of(sorted(impostor, reverse=True), genuine, false_alarms)
    vr = [sum(g >= t for g in genuine) / len(genuine) for t in thresholds]
    return vr, [k / len(impostor) for k in false_alarms], thresholds


def open_set_reference(score: np.ndarray, gallery_labels, probe_labels, points: list, rank_points=None):
    """OpenSetROC(score, gallery_labels, probe_labels, points[, rank_points]): (DIR [ranks][fars], FAR, thresholds)."""
    n_gallery, n_probes = score.shape
    if rank_points is None:
        rank_points = [r for r in list(range(1, 11)) + list(range(20, 101, 10)) if r <= n_gallery]
    binary = gallery_labels[:, None] == probe_labels[None, :]
    genuine_probes = [p for p in range(n_probes) if binary[:, p].any()]
    impostor_probes = [p for p in range(n_probes) if not binary[:, p].any()]
    false_alarms = [round_half_away(f * len(impostor_probes)) for f in points]
    impostor = sorted((max(score[:, p]) for p in impostor_probes), reverse=True)
    genuine, ranks = [], []
    for p in genuine_probes:
        column = score[:, p]
        order = sorted(range(n_gallery), key=lambda i: -column[i])  # sort(..., 'descend') is stable
        matches = [i for i in range(n_gallery) if binary[i, p]]
        best = max(matches, key=lambda i: column[i])  # max: the first of equal maxima
        genuine.append(column[best])
        ranks.append(order.index(best) + 1)
    thresholds = thresholds_of(impostor, genuine, false_alarms)
    dir_values = [[sum(1 for g, r in zip(genuine, ranks) if g >= t and r <= rank) / len(genuine) for t in thresholds]
                  for rank in rank_points]
    return dir_values, [k / len(impostor_probes) for k in false_alarms], thresholds


def unit(features) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    return features / np.sqrt((features ** 2).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- inputs

def clustered(rng, n: int, classes: int, dim: int, noise: float):
    labels = rng.integers(0, classes, n)
    return rng.standard_normal((classes, dim))[labels] + noise * rng.standard_normal((n, dim)), labels


def lattice(rng, n: int, dim: int = 6) -> np.ndarray:
    """Unit vectors of four entries +-1/2: every product is exact, a multiple of 1/4, so scores tie."""
    features = np.zeros((n, dim))
    for row in features:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return features


# ---------------------------------------------------------------- tests

def test_far_points_and_round_are_matlabs():
    assert VERIFICATION_FAR_POINTS.tolist() == far_points(-8) and len(VERIFICATION_FAR_POINTS) == 74
    assert OPEN_SET_FAR_POINTS.tolist() == far_points(-4) and len(OPEN_SET_FAR_POINTS) == 38
    values = [0.5, 1.5, 2.5, -2.5, 0.49999999999999994, 2.4999999999999996, 1e-3 * 46960863, 3e-8 * 46960863, 7.0]
    assert matlab_round(values).tolist() == [round_half_away(v) for v in values] == [1, 2, 3, -3, 0, 2, 46961, 1, 7]


@pytest.mark.parametrize("noise, classes, block", [(0.4, 8, 1 << 23), (3.0, 5, 50), (1.0, 30, 7)])
def test_verification_equals_evalroc(noise, classes, block):
    rng = np.random.default_rng(classes)
    features, labels = clustered(rng, 70, classes, 8, noise)
    vr, far, thresholds = verification_roc(features, labels, block_elements=block)
    score = unit(features) @ unit(features).T
    ref_vr, ref_far, ref_thresholds = eval_roc_reference(score, labels, far_points(-8))
    assert vr.tolist() == ref_vr and far.tolist() == ref_far
    np.testing.assert_allclose(thresholds, ref_thresholds, rtol=0, atol=1e-12)


def test_verification_threshold_rules_at_far_zero():
    rng = np.random.default_rng(3)
    for genuine_above in (True, False):
        features, labels = clustered(rng, 40, 4, 8, 0.2)
        if not genuine_above:  # an impostor pair of one image twice scores above every genuine pair
            features[np.flatnonzero(labels != labels[0])[0]] = features[0]
        score = unit(features) @ unit(features).T
        lower = np.tril(np.ones(score.shape, bool), -1)
        same = labels[:, None] == labels[None, :]
        assert bool(score[lower & same].max() > score[lower & ~same].max()) is genuine_above
        _, _, thresholds = verification_roc(features, labels)
        ref = eval_roc_reference(score, labels, far_points(-8))[2]
        assert abs(thresholds[0] - ref[0]) < 1e-12 and abs(thresholds[-1] - ref[-1]) < 1e-12


def test_verification_ties_exactly():
    rng = np.random.default_rng(5)
    for _ in range(5):
        features, labels = lattice(rng, 50), rng.integers(0, 6, 50)
        result = verification_roc(features, labels, block_elements=60)
        reference = eval_roc_reference(features @ features.T, labels, far_points(-8))
        assert [r.tolist() for r in result] == [list(r) for r in reference]


@pytest.mark.parametrize("seed", range(4))
def test_open_set_equals_opensetroc(seed):
    rng = np.random.default_rng(seed)
    gallery, gallery_labels = clustered(rng, 25, 25, 8, 0.8)  # labels may repeat: several images of one class
    probes = np.concatenate((gallery[rng.integers(0, 25, 30)] + 0.9 * rng.standard_normal((30, 8)),
                             rng.standard_normal((35, 8))))
    probe_labels = np.concatenate((gallery_labels[rng.integers(0, 25, 30)], np.arange(100, 135)))
    result = open_set_roc(gallery, gallery_labels, probes, probe_labels)
    dir_values, far, thresholds = open_set_reference(unit(gallery) @ unit(probes).T, gallery_labels, probe_labels,
                                                     far_points(-4))
    assert result.rank_points.tolist() == list(range(1, 11)) + [20]  # ranks above the gallery size dropped
    assert result.dir.tolist() == dir_values and result.far.tolist() == far
    np.testing.assert_allclose(result.thresholds, thresholds, rtol=0, atol=1e-12)


def test_open_set_ties_exactly():
    rng = np.random.default_rng(11)
    for _ in range(6):
        gallery, probes = lattice(rng, 30), lattice(rng, 60)
        gallery_labels, probe_labels = rng.integers(0, 15, 30), rng.integers(0, 30, 60)
        result = open_set_roc(gallery, gallery_labels, probes, probe_labels, rank_points=[1, 2, 3, 5, 10, 40])
        reference = open_set_reference(gallery @ probes.T, gallery_labels, probe_labels, far_points(-4),
                                       [1, 2, 3, 5, 10, 40])
        assert (result.dir.tolist(), result.far.tolist(), result.thresholds.tolist()) == reference


def one_based_cells(vectors) -> np.ndarray:
    cells = np.empty((len(vectors), 1), dtype=object)
    for row, vector in enumerate(vectors):
        cells[row, 0] = np.asarray(vector, dtype=np.float64).reshape(-1, 1) + 1
    return cells


def synthetic_config(rng, n_images=120, classes=30, trials=4):
    """(fields of a config in the release's layout, labels, per-trial 0-based (test, gallery, probes))."""
    labels = np.sort(rng.integers(0, classes, n_images))
    names = np.empty((n_images, 1), dtype=object)
    for row, label in enumerate(labels):
        names[row, 0] = f"Person_{label}_{row + 1:04d}.jpg"
    splits = []
    for _ in range(trials):
        test = np.sort(rng.choice(n_images, 90, replace=False))
        kept_classes = np.unique(labels[test])[:12]
        gallery = np.array([test[labels[test] == c][0] for c in kept_classes])
        splits.append((test, gallery, np.setdiff1d(test, gallery)))
    fields = {"imageList": names, "labels": (labels + 1.0).reshape(-1, 1),
              "trainIndex": one_based_cells([np.setdiff1d(np.arange(n_images), t) for t, _, _ in splits]),
              "testIndex": one_based_cells([t for t, _, _ in splits]),
              "galIndex": one_based_cells([g for _, g, _ in splits]),
              "probIndex": one_based_cells([p for _, _, p in splits])}
    return fields, labels, splits


def test_blufr_trials_and_report_equal_the_demo(tmp_path):
    rng = np.random.default_rng(21)
    fields, labels, splits = synthetic_config(rng)
    savemat(tmp_path / "config.mat", fields)
    config = read_blufr_config(tmp_path / "config.mat")
    features = rng.standard_normal((30, 16))[labels] + 1.2 * rng.standard_normal((len(labels), 16))
    result = evaluate_blufr(features, config)
    vr_at, dir_at = [], []
    for trial, (test, gallery, probes) in enumerate(splits):
        score = unit(features[test]) @ unit(features[test]).T
        vr = eval_roc_reference(score, labels[test], far_points(-8))[0]
        assert result.vr[trial].tolist() == vr
        position = {index: place for place, index in enumerate(test)}  # ismember(galIndex, testIndex)
        g_idx, p_idx = [position[i] for i in gallery], [position[i] for i in probes]
        dir_values = open_set_reference(score[np.ix_(g_idx, p_idx)], labels[test][g_idx], labels[test][p_idx],
                                        far_points(-4))[0]
        assert result.dir[trial].tolist() == dir_values
        vr_at.append(vr[far_points(-8).index(0.001)])
        dir_at.append(dir_values[0][far_points(-4).index(0.01)])
    record = result.to_json()
    assert record["vr_trials"] == vr_at and record["dir_trials"] == dir_at
    for key, values in (("vr", vr_at), ("dir", dir_at)):  # mean - std, std normalised by N - 1
        assert record[key] == pytest.approx(statistics.fmean(values) - statistics.stdev(values), abs=1e-15)


def test_config_round_trip_keeps_the_layout(tmp_path):
    rng = np.random.default_rng(2)
    fields, labels, splits = synthetic_config(rng, trials=2)
    names = [str(item[0]) for item in fields["imageList"][:, 0]]
    write_blufr_config(tmp_path / "ours.mat", names, labels + 1, [np.arange(5)] * 2, [s[0] for s in splits],
                       [s[1] for s in splits], [s[2] for s in splits])
    config = read_blufr_config(tmp_path / "ours.mat")
    assert config.image_list == names and config.labels.tolist() == (labels + 1).tolist()
    assert all(np.array_equal(a, b[1]) for a, b in zip(config.gallery, splits))


@pytest.mark.parametrize("change, message", [
    (lambda f: f.pop("galIndex"), "no field galIndex"),
    (lambda f: f.update(labels=f["labels"][:-1]), "labels holds 119 values for the 120 images"),
    (lambda f: f["testIndex"][0, 0].__setitem__((0, 0), 121), "testIndex: trial 1 holds index 121, outside 1..120"),
    (lambda f: f["galIndex"][1, 0].__setitem__((0, 0), float(np.setdiff1d(np.arange(1, 121), f["testIndex"][1, 0])[0])),
     "galIndex: trial 2's image"),
    (lambda f: f["probIndex"][0, 0].__setitem__((0, 0), 2.5), "probIndex: trial 1's indices holds a value that is not"),
    (lambda f: f.update(trainIndex=f["trainIndex"][:3]), "different numbers of trials"),
])
def test_bad_configs_are_refused_in_one_line(tmp_path, change, message):
    fields = synthetic_config(np.random.default_rng(4))[0]
    change(fields)
    savemat(tmp_path / "config.mat", fields)
    with pytest.raises(DataFormatError) as caught:
        read_blufr_config(tmp_path / "config.mat")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_non_mat_file_is_refused(tmp_path):
    (tmp_path / "config.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataFormatError, match="not a MATLAB .mat file"):
        read_blufr_config(tmp_path / "config.mat")
