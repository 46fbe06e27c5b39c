"""DeepGlint Trillion-Pairs (evaluation/deepglint): the streaming search equals brute force -- every
score in float64, sorted -- on random sets cut into many small tiles, on features whose scores tie
everywhere, and on near-ties that float32 scores order wrongly; the feature binary has the old
script's bytes and its reader refuses what is not one, in one line."""

import struct
from fractions import Fraction

import numpy as np
import pytest
import torch

from evaluation.deepglint import (check_feature_rows, count_pairs, evaluate_deepglint, feature_order,
                                  read_feature_bin, read_labels, write_feature_bin)
from evaluation.deepglint.protocol import _HighestScores
from runtime import DataFormatError


def brute_force(features, labels, fpr, dtype=np.float64):
    """(TPR, threshold, rank-1) from every score of the set, as the protocol reads (float64 unless
    dtype says otherwise)."""
    x = np.asarray(features, dtype=dtype)
    x = x / np.sqrt((x * x).sum(axis=1, keepdims=True))
    scores = x @ x.T
    probes, distractors = np.flatnonzero(labels >= 0), np.flatnonzero(labels == -1)
    same = labels[probes][:, None] == labels[probes][None, :]
    upper = np.triu(np.ones(same.shape, bool), 1)
    probe_scores = scores[np.ix_(probes, probes)]
    positive = probe_scores[upper & same]
    negative = np.concatenate((probe_scores[upper & ~same], scores[np.ix_(probes, distractors)].ravel()))
    k = int(Fraction(fpr) * len(negative))
    threshold = np.sort(negative)[::-1][k] if k < len(negative) else -np.inf
    best = scores[np.ix_(probes, distractors)].max(axis=1) if len(distractors) else np.full(len(probes), -np.inf)
    trials = [probe_scores[a, b] > best[a] for a in range(len(probes)) for b in range(len(probes))
              if a != b and same[a, b]]
    return float((positive > threshold).mean()), float(threshold), float(np.mean(trials))


def random_set(rng, n_probes, identities, n_distractors, dim):
    identity = rng.integers(0, identities, n_probes)
    noise = rng.uniform(0.3, 2.0) * rng.standard_normal((n_probes, dim))
    probes = rng.standard_normal((identities, dim))[identity] + noise
    features = np.concatenate((probes, rng.standard_normal((n_distractors, dim)))).astype(np.float32)
    labels = np.concatenate((identity, np.full(n_distractors, -1)))
    order = rng.permutation(len(labels))  # probes and distractors interleaved
    return features[order], labels[order]


def assert_brute_force(features, labels, fpr, **tiles):
    result = evaluate_deepglint(features, labels, fpr, **tiles)
    tpr, threshold, rank1 = brute_force(features, labels, fpr)
    assert (result.tpr, result.rank1) == (tpr, rank1)
    assert result.threshold == threshold or abs(result.threshold - threshold) < 1e-13  # -inf, or one summation apart
    return result


@pytest.mark.parametrize("seed", range(6))
def test_streaming_search_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    features, labels = random_set(rng, int(rng.integers(20, 70)), int(rng.integers(3, 12)),
                                  int(rng.integers(0, 250)), int(rng.integers(4, 24)))
    for fpr in ("0", "1e-4", "0.003", "0.05", "0.5", "1"):
        assert_brute_force(features, labels, fpr, column_chunk=int(rng.integers(3, 40)),
                           tile_elements=int(rng.integers(40, 1500)))


def test_ties_equal_brute_force_exactly():
    """Unit vectors of four entries +-1/2: every score is an exact multiple of 1/4."""
    rng = np.random.default_rng(7)
    for _ in range(8):
        features = np.zeros((200, 6), np.float32)
        for row in features:
            row[rng.choice(6, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        labels = np.concatenate((rng.integers(0, 5, 40), np.full(160, -1)))
        for fpr in ("0", "0.001", "0.02", "0.3"):
            result = assert_brute_force(features, labels, fpr, column_chunk=9, tile_elements=120)
            assert result.threshold == brute_force(features, labels, fpr)[1]


def near_ties(seed, dim=64, cluster=40, others=200):
    """A probe a, its mate b and a cluster of distractors, b and the cluster 1-ulp nudges of one
    vector: their scores with a differ by about 1e-9, far below float32's resolution. b is the
    nudge closest to a on even seeds (a's trial right in float64 by less than that), the second
    closest on odd ones (wrong by as little)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(dim).astype(np.float32)
    base = (a + 0.3 * rng.standard_normal(dim)).astype(np.float32)
    nudges = np.repeat(base[None], cluster + 1, axis=0)
    for row in nudges:
        for k in rng.choice(dim, 3, replace=False):
            row[k] = np.nextafter(row[k], np.float32(rng.choice([-np.inf, np.inf])))
    exact = nudges.astype(np.float64) @ a / np.linalg.norm(nudges.astype(np.float64), axis=1)
    mate = int(np.argsort(exact)[-1 - seed % 2])
    distractors = np.concatenate((np.delete(nudges, mate, axis=0),
                                  rng.standard_normal((others, dim)).astype(np.float32)))
    features = np.concatenate((np.stack([a, nudges[mate]]), distractors))
    return features, np.concatenate(([0, 0], np.full(len(distractors), -1)))


def test_near_ties_are_decided_in_float64():
    float32_wrong = 0
    for seed in range(12):
        features, labels = near_ties(seed)
        negatives = count_pairs(labels, 0).n_negative
        for k in (0, 5, 20, 39, 60):
            fpr = Fraction(k, negatives)
            result = assert_brute_force(features, labels, fpr, column_chunk=17, tile_elements=40)
            assert result.false_accepts == k
            float32 = brute_force(features, labels, fpr, dtype=np.float32)
            float32_wrong += (float32[0] != result.tpr) + (float32[2] != result.rank1)
    assert float32_wrong > 0  # the set does need the float64 rescoring


def test_rank1_near_ties_are_decided_in_float64():
    """a's mate b scores a hair below (or above) a's one close distractor: float32 decides at random."""
    float32_wrong = 0
    for seed in range(16):
        features, labels = near_ties(seed, cluster=2)
        unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
        keep = np.ones(len(labels), bool)
        keep[2 + int(np.argmin(unit[2:4] @ unit[0]))] = False  # of the two other nudges, the closer to a stays
        features, labels = features[keep], labels[keep]
        result = assert_brute_force(features, labels, "0", column_chunk=16, tile_elements=64)
        float32_wrong += brute_force(features, labels, "0", dtype=np.float32)[2] != result.rank1
    assert float32_wrong > 0


def test_highest_scores_survive_approximations_off_by_the_whole_margin():
    """The selection logic alone, with tiles whose approximate scores err by up to the margin in
    either direction (float32 products err far less): the kept values are the exact top k+1."""
    rng = np.random.default_rng(3)
    margin = 0.01
    for _ in range(30):
        # a 0.001 grid (many ties, all within the margin), the first tiles highest, as the kept values come
        exact = np.round(rng.normal(0, 0.05, (6, 20, 30)) - 0.03 * np.arange(6)[:, None, None], 3)
        exact[rng.random(exact.shape) < 0.2] = -np.inf  # cells that are no pair
        approximate = exact + 0.999 * margin * rng.choice([-1.0, 1.0], exact.shape)
        size = int(rng.integers(1, 120))
        kept = _HighestScores(size, margin)
        for tile_exact, tile in zip(exact, approximate):
            tile = torch.from_numpy(tile)
            kept.offer(tile, tile.amax(dim=1), lambda i, j, tile_exact=tile_exact: tile_exact[i, j])
        finite = np.sort(exact[np.isfinite(exact)])[::-1]
        assert np.sort(kept.values)[::-1].tolist() == finite[:size].tolist()


def test_counts_and_fpr_as_written():
    labels = np.array([0, 0, 0, 1, 1, 2, -1, -1, -1, -1])
    counts = count_pairs(labels, "0.1")
    assert (counts.n_probes, counts.n_distractors, counts.n_identities) == (6, 4, 3)
    assert counts.n_positive == 3 + 1 and counts.n_negative == 15 - 4 + 24
    ten_negatives = np.array([0, 0, -1, -1, -1, -1, -1])
    assert count_pairs(ten_negatives, 0.3).false_accepts == 3  # 0.3 as written; its binary value x 10 is 2.99...
    assert count_pairs(np.array([0, 1, -1]).repeat(4), "1e-9").false_accepts == 0
    with pytest.raises(ValueError, match="no positive pair"):
        count_pairs(np.array([0, 1, 2, -1]), "0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_search_equals_brute_force():
    features, labels = random_set(np.random.default_rng(1), 300, 40, 3000, 64)
    assert_brute_force(features, labels, "1e-4", device="cuda", column_chunk=512, tile_elements=1 << 16)


# ---------------------------------------------------------------- files

def old_script_bytes(matrix: np.ndarray) -> bytes:
    """What eval_deepglint_merge.py's save_mat writes: struct.pack('iiii', rows, cols, cols * 4, 5) and m.data."""
    rows, cols = matrix.shape
    return struct.pack("iiii", rows, cols, cols * 4, 5) + matrix.data.tobytes()


def test_feature_binary_has_the_old_scripts_bytes(tmp_path):
    matrix = np.random.default_rng(0).standard_normal((37, 12)).astype(np.float32)
    (tmp_path / "old.bin").write_bytes(old_script_bytes(matrix))
    assert np.array_equal(read_feature_bin(tmp_path / "old.bin"), matrix)
    blocks = (matrix[start:start + 5] for start in range(0, 37, 5))
    write_feature_bin(tmp_path / "ours.bin", blocks, 37, 12)
    assert (tmp_path / "ours.bin").read_bytes() == old_script_bytes(matrix)
    assert not (tmp_path / "ours.bin.partial").exists()


def test_feature_binary_rows_are_read_on_demand(tmp_path):
    matrix = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)
    write_feature_bin(tmp_path / "f.bin", [matrix], 40, 6)
    rows = read_feature_bin(tmp_path / "f.bin")
    assert len(rows) == 40 and rows.shape == (40, 6)
    index = np.array([0, 1, 2, 9, 10, 39, 5])
    for key in (slice(3, 17), slice(None, None, 4), index, matrix[:, 0] > 0, 7):
        assert np.array_equal(rows[key], matrix[key])
    with pytest.raises(IndexError):
        rows[np.array([40])]


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="3 rows written for a header of 4"):
        write_feature_bin(tmp_path / "f.bin", [np.zeros((3, 2), np.float32)], 4, 2)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "too short for the 16-byte header"),
    (struct.pack("<4i", 3, 4, 16, 6) + bytes(48), "unreadable header (rows 3, cols 4, row bytes 16, type 6)"),
    (struct.pack("<4i", 3, 4, 12, 5) + bytes(48), "unreadable header"),
    (struct.pack("<4i", 3, 4, 16, 5) + bytes(40), "needs 64 (truncated)"),
    (struct.pack("<4i", 3, 4, 16, 5) + bytes(52), "(trailing bytes)"),
    (struct.pack("<4i", 0, 4, 16, 5), "unreadable header"),
])
def test_bad_headers_are_refused_in_one_line(tmp_path, content, message):
    (tmp_path / "f.bin").write_bytes(content)
    with pytest.raises(DataFormatError) as caught:
        read_feature_bin(tmp_path / "f.bin")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_nan_and_zero_rows_are_refused(tmp_path):
    features = np.ones((300, 4), np.float32)
    features[250, 2] = np.nan
    with pytest.raises(DataFormatError, match="feature row 250 holds a NaN"):
        check_feature_rows("f.bin", features, block=64)
    features[250] = 0
    with pytest.raises(DataFormatError, match="feature row 250 is all zeros"):
        check_feature_rows("f.bin", features, block=64)


@pytest.mark.parametrize("text, message", [
    ("0\n1\nx\n", "line 3: 'x' is not a label"),
    ("0\n-2\n", "line 2: '-2' is not a label"),
    ("0\n1\n1.5\n", "line 3"),
    ("0\n1\n", "2 labels for the 3 rows"),
    ("\n\n", "label file is empty"),
])
def test_bad_label_files_are_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "labels.txt").write_text(text)
    with pytest.raises(DataFormatError) as caught:
        read_labels(tmp_path / "labels.txt", 3)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_labels_read_with_a_trailing_blank_line(tmp_path):
    (tmp_path / "labels.txt").write_text("3\n-1\n 0 \n\n")
    assert read_labels(tmp_path / "labels.txt", 3).tolist() == [3, -1, 0]


def test_feature_order_is_the_old_scripts_sort_of_feature_files():
    paths = ["b/x.jpg", "a.jpg-1.jpg", "a.jpg", "a/z.jpg", "a-b/y.jpg", "A/c.jpg"]
    old = sorted(f"/data/deepglint/{path}.feat" for path in paths)  # total_files.sort()
    assert [f"/data/deepglint/{path}.feat" for path in feature_order(paths)] == old
    assert feature_order(paths) != sorted(paths)  # "a.jpg-1.jpg.feat" < "a.jpg.feat", unlike the image names
