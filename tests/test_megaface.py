"""MegaFace identification / verification against a brute force over the full score matrix.

Features are quantised (entries multiples of 1/2) so that every dot product is exact in float32 and
float64 alike, whatever the summation order: the chunked float32 search and the float64 brute force
then see the same scores, and many of them tie, including genuine scores equal to the best
distractor score (a failure at rank 1)."""

from fractions import Fraction

import numpy as np
import pytest

from evaluation.megaface import distractor_order, evaluate_megaface
from evaluation.megaface.noise import (clean_facescrub_probes, facescrub_noise_mask, megaface_noise_mask,
                                       parse_facescrub_noises, parse_megaface_noises)

DIM = 8


def quantised(rng, count):
    return rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(count, DIM)).astype(np.float32)


def probe_set(rng, identities=8, per_identity=5):
    labels = np.repeat(np.arange(identities), per_identity)
    centres = quantised(rng, identities)
    noise = rng.choice([-0.5, 0.0, 0.5], size=(labels.size, DIM), p=[0.2, 0.6, 0.2]).astype(np.float32)
    return centres[labels] + noise, labels


def brute_force(probes, labels, distractors, subset, excluded, cmc_ranks, far_targets):
    probes, distractors = probes.astype(np.float64), distractors.astype(np.float64)
    probe_scores = probes @ probes.T
    impostor_scores = probes @ distractors[subset].T
    if excluded is not None:
        impostor_scores[:, excluded[subset]] = -np.inf
    ranks, genuine = [], []
    for a in range(len(labels)):
        for b in range(len(labels)):
            if a != b and labels[a] == labels[b]:
                ranks.append(1 + np.sum(impostor_scores[a] >= probe_scores[a, b]))
                if a < b:
                    genuine.append(probe_scores[a, b])
    ranks, genuine = np.array(ranks), np.array(genuine)
    cmc = np.array([np.mean(ranks <= k) for k in range(1, cmc_ranks + 1)])
    impostors = impostor_scores.ravel()
    tar, thresholds = {}, {}
    for far in far_targets:
        # the most permissive threshold whose FAR stays within the target, over all candidates
        allowed = Fraction(repr(far)) * impostors.size
        feasible = [t for t in np.r_[-np.inf, np.unique(impostors)] if np.sum(impostors > t) <= allowed]
        thresholds[far] = min(feasible)
        tar[far] = np.mean(genuine > thresholds[far])
    return cmc, tar, thresholds, ranks, impostor_scores


def assert_matches_brute_force(probes, labels, distractors, counts, *, excluded=None, seed=0,
                               cmc_ranks=5, far_targets=(1e-3, 1e-2), chunk_size=256):
    result = evaluate_megaface(probes, labels, distractors, distractor_counts=counts, excluded_distractors=excluded,
                               cmc_ranks=cmc_ranks, far_targets=far_targets, seed=seed, normalize=False,
                               chunk_size=chunk_size)
    order = distractor_order(len(distractors), seed)
    for n in counts:
        cmc, tar, thresholds, _, _ = brute_force(probes, labels, distractors, order[:n], excluded, cmc_ranks,
                                                 far_targets)
        np.testing.assert_array_equal(result.cmc[n], cmc)
        assert result.rank1[n] == cmc[0]
        for far in far_targets:
            assert result.threshold_at_far[n][far] == thresholds[far], (n, far)
            assert result.tar_at_far[n][far] == tar[far], (n, far)
            assert result.far_reached[n][far] <= far
    return result


def test_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    probes, labels = probe_set(rng)
    distractors = quantised(rng, 3000)
    counts = [10, 100, 1000, 3000]
    result = assert_matches_brute_force(probes, labels, distractors, counts)
    # the premise: some genuine scores equal the best distractor score, and count as failures
    order = distractor_order(3000, 0)
    _, _, _, ranks, impostor_scores = brute_force(probes, labels, distractors, order[:1000], None, 5, ())
    best = impostor_scores.max(1)
    trial_query = [a for a in range(len(labels)) for b in range(len(labels)) if a != b and labels[a] == labels[b]]
    trial_gallery = [b for a in range(len(labels)) for b in range(len(labels)) if a != b and labels[a] == labels[b]]
    genuine = (probes.astype(np.float64) @ probes.T.astype(np.float64))[trial_query, trial_gallery]
    ties = genuine == best[trial_query]
    assert ties.any() and (ranks[ties] > 1).all()
    assert 0 < result.rank1[1000] < result.rank1[10] <= 1
    assert result.n_trials == 8 * 5 * 4 and result.n_genuine_pairs == 8 * 10


def test_nested_subsets_and_chunking_do_not_change_results():
    rng = np.random.default_rng(1)
    probes, labels = probe_set(rng)
    distractors = quantised(rng, 2000)
    order_a, order_b = distractor_order(2000, 5), distractor_order(2000, 5)
    np.testing.assert_array_equal(order_a, order_b)
    assert sorted(order_a) == list(range(2000))
    together = evaluate_megaface(probes, labels, distractors, distractor_counts=[10, 100, 2000], seed=5,
                                 normalize=False, chunk_size=64, far_targets=(1e-2,))
    for n in (10, 100, 2000):
        alone = evaluate_megaface(probes, labels, distractors, distractor_counts=[n], seed=5, normalize=False,
                                  chunk_size=1000, far_targets=(1e-2,))
        np.testing.assert_array_equal(alone.cmc[n], together.cmc[n])
        assert alone.tar_at_far[n] == together.tar_at_far[n]
    # another seed draws other subsets
    other = evaluate_megaface(probes, labels, distractors, distractor_counts=[10], seed=6, normalize=False)
    assert_matches_brute_force(probes, labels, distractors, [10, 100], seed=6)
    assert other.distractor_counts == [10]


def test_excluded_distractors_never_win_but_still_count():
    rng = np.random.default_rng(2)
    probes, labels = probe_set(rng)
    distractors = quantised(rng, 500)
    # distractors copying probes would beat or tie every genuine pair of those probes
    distractors[:40] = probes
    excluded = np.zeros(500, bool)
    excluded[:40] = True
    kept = assert_matches_brute_force(probes, labels, distractors, [100, 500], excluded=excluded)
    plain = evaluate_megaface(probes, labels, distractors, distractor_counts=[100, 500], normalize=False)
    assert kept.rank1[500] > plain.rank1[500]
    assert kept.n_excluded[500] == 40 and kept.n_excluded[100] == int(np.sum(excluded[distractor_order(500, 0)[:100]]))


def test_roc_counts_scores_above_each_edge():
    rng = np.random.default_rng(3)
    probes, labels = probe_set(rng)
    distractors = quantised(rng, 400)
    result = evaluate_megaface(probes, labels, distractors, distractor_counts=[400], normalize=False, roc_bins=2000)
    roc = result.roc[400]
    assert roc.fpr.shape == roc.tpr.shape == roc.thresholds.shape == (2000,)
    assert np.all(np.diff(roc.fpr) <= 0) and np.all(np.diff(roc.tpr) <= 0)
    # scores are multiples of 1/4 (clamped to [-1, 1]); an edge between two levels is unambiguous
    impostors = np.clip(probes.astype(np.float64) @ distractors.T.astype(np.float64), -1, 1).ravel()
    edge = int(np.searchsorted(roc.thresholds, 0.1))
    assert roc.fpr[edge] == np.mean(impostors >= roc.thresholds[edge])


def test_normalisation_and_input_checks():
    rng = np.random.default_rng(4)
    # four entries of ±0.5: exactly unit norm, so normalising the 3x-scaled copies is exact
    def unit(count):
        vectors = np.zeros((count, DIM), np.float32)
        for row in vectors:
            row[rng.choice(DIM, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
        return vectors
    labels = np.repeat(np.arange(6), 4)
    probes, distractors = unit(labels.size), unit(300)
    normalised = evaluate_megaface(3 * probes, labels, 3 * distractors, distractor_counts=[300], far_targets=(1e-2,))
    raw = evaluate_megaface(probes, labels, distractors, distractor_counts=[300], normalize=False, far_targets=(1e-2,))
    np.testing.assert_array_equal(normalised.cmc[300], raw.cmc[300])
    assert normalised.tar_at_far == raw.tar_at_far

    bad = distractors.copy()
    bad[123, 2] = np.nan
    with pytest.raises(ValueError, match="distractor row 123"):
        evaluate_megaface(probes, labels, bad, distractor_counts=[300])
    with pytest.raises(ValueError, match=r"1\.\.300"):
        evaluate_megaface(probes, labels, distractors, distractor_counts=[1000])
    with pytest.raises(ValueError, match="no identity has two probe images"):
        evaluate_megaface(probes, np.arange(labels.size), distractors)
    with pytest.raises(ValueError, match="valid: cpu, cuda"):
        evaluate_megaface(probes, labels, distractors, device="tpu")
    record = raw.to_json(include_roc=True)
    assert set(record["tar_at_far"]["300"]) == {"1e-2"} and len(record["roc"]["300"]["fpr"]) == 2000


def test_facescrub_noise_cleaning():
    rng = np.random.default_rng(5)
    features = rng.standard_normal((9, 16)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    names = [f"facescrub/Person_{label}/Person_{label}_{i}.png" for i, label in enumerate(labels)]
    noisy = parse_facescrub_noises(["# FaceScrub noise list\n", "Person_0_1.png\n", "\n", "Person_2_8.png\n",
                                    "Someone_else_3.png\n"])
    mask = facescrub_noise_mask(names, noisy)
    np.testing.assert_array_equal(np.nonzero(mask)[0], [1, 8])

    cleaned = clean_facescrub_probes(features, labels, mask, seed=0)
    np.testing.assert_array_equal(cleaned[~mask], features[~mask])
    for row, clean_rows in ((1, [0, 2]), (8, [6, 7])):
        centre = features[clean_rows].sum(0)
        assert np.linalg.norm(cleaned[row]) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(cleaned[row], centre / np.linalg.norm(centre), atol=2e-3)
        assert not np.array_equal(cleaned[row], centre / np.linalg.norm(centre))  # the noise is there
    np.testing.assert_array_equal(cleaned, clean_facescrub_probes(features, labels, mask, seed=0))
    assert not np.array_equal(cleaned, clean_facescrub_probes(features, labels, mask, seed=1))

    with pytest.raises(ValueError, match="identity 1 has no clean probe"):
        clean_facescrub_probes(features, labels, labels == 1)


def test_megaface_noise_mask():
    keys = parse_megaface_noises(["# MegaFace noise list\n", "123\t871/87135062@N00/2359578473_0.jpg\n",
                                  "999/99999999@N00/1_1.jpg\n", "\n"])
    assert keys == {"871/87135062@N00/2359578473_0.jpg", "999/99999999@N00/1_1.jpg"}
    names = ["/data/megaface/871/87135062@N00/2359578473_0.jpg", "/data/megaface/871/87135062@N00/2359578473_1.jpg",
             "999/99999999@N00/1_1.jpg", "other/999/99999999@N01/1_1.jpg"]
    np.testing.assert_array_equal(megaface_noise_mask(names, keys), [True, False, True, False])
