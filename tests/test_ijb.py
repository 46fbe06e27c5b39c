"""evaluation/ijb/protocol.py against the reference code re-stated in tests/ijb_reference.py (eval_ijbc.py's
per-template loops, scikit-learn's roc_curve and the TAR reading, ijb_evals.py's 1:N), on synthetic
IJB-like sets: templates of one image, media of several, probes absent from a gallery, a template
that repeats another's images under another subject (exact genuine/impostor ties), every mode."""

import itertools

import numpy as np
import pytest

import ijb_reference as reference
from dataset.synthetic_ijb import plan_synthetic_ijb
from evaluation.ijb.protocol import (DET_FPIRS, FAR_TARGETS, FeatureRows, Mode, TemplatePooling, image_features,
                                     pair_scores, read_tar_at_far, roc_curve)
from evaluation.ijb.identify import scores_and_searches, search_gallery

MODES = [Mode(bool(n), bool(d), f) for n, d, f in itertools.product((1, 0), (1, 0), (2, 1, 0))]


def subject_features(plan, dim=8, seed=0):
    """(embeddings, mirror embeddings, faceness) per image row: the subject's centre plus noise, the
    same for rows that repeat an image (the copied template), faceness with three decimals."""
    rng = np.random.default_rng(seed)
    renders = plan.render_index.max() + 1
    centres = rng.standard_normal((plan.subjects.max() + 1, dim))
    subject_of_render = np.zeros(renders, dtype=np.int64)
    subject_of_render[plan.render_index] = plan.subjects
    table = centres[subject_of_render][:, None] + 0.9 * rng.standard_normal((renders, 2, dim))
    table = (table * rng.uniform(0.5, 3, (renders, 1, 1))).astype(np.float32)
    faceness = np.round(rng.uniform(0.1, 1, renders), 3).astype(np.float32)
    return table[plan.render_index, 0], table[plan.render_index, 1], faceness[plan.render_index]


@pytest.fixture(scope="module")
def planned():
    plan = plan_synthetic_ijb(subjects=10, probes_per_subject=3, unenrolled_subjects=2, seed=4)
    return plan, *subject_features(plan)


def reference_scores(plan, embeddings, flipped, faceness, mode):
    features = reference.image_input_features(np.concatenate((embeddings, flipped), 1), faceness, mode.keep_norm,
                                              mode.faceness, mode.flip > 0, concat=mode.flip == 1)
    templates, ids, _ = reference.image2template_feature(features, plan.templates, plan.medias)
    return features, templates, ids, reference.verification(templates, ids, plan.pairs[:, 0], plan.pairs[:, 1])


def test_the_synthetic_plan_has_every_shape_the_tests_rely_on(planned):
    plan = planned[0]
    sizes = np.unique(plan.templates, return_counts=True)[1]
    media_sizes = np.unique(np.stack((plan.templates, plan.medias)), axis=1, return_counts=True)[1]
    assert sizes.min() == 1 and media_sizes.max() > 1 and (media_sizes == 1).any()
    enrolled = {plan.template_subject[int(t)] for ids in plan.galleries.values() for t in ids}
    assert any(plan.template_subject[int(t)] not in enrolled for t in plan.probes)
    assert not np.array_equal(plan.templates, np.sort(plan.templates))  # rows not in template order


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_image_features_and_template_pooling_equal_the_per_template_loop_bit_for_bit(planned, mode):
    plan, embeddings, flipped, faceness = planned
    expected_images, expected, ids, _ = reference_scores(plan, embeddings, flipped, faceness, mode)
    assert np.array_equal(image_features(embeddings, flipped, faceness, mode), expected_images)
    pooling = TemplatePooling(plan.templates, plan.medias)
    for block in (1, 7, 10 ** 6):  # one template at a time, a few, all at once
        pooled = pooling.pool(FeatureRows(embeddings, flipped), faceness, mode, block_images=block)
        assert np.array_equal(pooling.ids, ids) and np.array_equal(pooled, expected)


def test_images_left_out_pool_as_if_their_rows_were_not_listed(planned):
    plan, embeddings, flipped, faceness = planned
    valid = np.ones(len(plan.templates), dtype=bool)
    valid[::4] = False
    one_image = np.unique(plan.templates, return_counts=True)
    lone = one_image[0][one_image[1] == 1][0]
    valid[plan.templates == lone] = False  # a template left with no image keeps a zero row
    mode = Mode()
    images = reference.image_input_features(np.concatenate((embeddings, flipped), 1), faceness, True, True, True)
    expected, kept_ids, _ = reference.image2template_feature(images[valid], plan.templates[valid], plan.medias[valid])
    pooling = TemplatePooling(plan.templates, plan.medias, valid)
    pooled = pooling.pool(FeatureRows(embeddings, flipped), faceness, mode, block_images=5)
    rows = np.searchsorted(pooling.ids, kept_ids)
    assert np.array_equal(pooled[rows], expected)
    assert not pooled[np.searchsorted(pooling.ids, lone)].any()


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
def test_pair_scores_and_tar_at_far_equal_eval_ijbc(planned, mode):
    plan, embeddings, flipped, faceness = planned
    _, templates, ids, expected = reference_scores(plan, embeddings, flipped, faceness, mode)
    first, second = np.searchsorted(ids, plan.pairs[:, 0]), np.searchsorted(ids, plan.pairs[:, 1])
    for dense in (True, False):  # one matrix product of the templates in use, or row by row
        scores = pair_scores(templates, first, second, dense=dense)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-14)
        # the copied template scores exactly as its source: equal scores stay equal
        assert np.array_equal(np.equal.outer(scores, scores), np.equal.outer(expected, expected))
        tar = {far: read[0] for far, read in read_tar_at_far(roc_curve(plan.labels, scores)).items()}
        assert list(tar.values()) == reference.tpr_at_fpr(plan.labels.astype(int), expected)
    assert len(set(tar.values())) > 2  # the set is not degenerate: the reading differs between FARs


def random_scores(rng, n, positives, decimals):
    labels = np.zeros(n, dtype=bool)
    labels[rng.choice(n, positives, replace=False)] = True
    scores = np.round(rng.standard_normal(n) + 1.5 * labels, decimals)  # coarse grid: many ties
    return labels, scores


@pytest.mark.parametrize("seed", range(6))
def test_roc_keeps_exactly_the_points_scikit_learn_keeps(seed):
    rng = np.random.default_rng(seed)
    for n, positives, decimals in ((2, 1, 3), (3, 1, 0), (50, 10, 1), (2000, 40, 2), (20000, 300, 3)):
        labels, scores = random_scores(rng, n, positives, decimals)
        roc = roc_curve(labels, scores)
        fpr, tpr, thresholds = reference.roc_curve(labels.astype(int), scores)
        assert np.array_equal(roc.fpr, fpr) and np.array_equal(roc.tpr, tpr)
        assert np.array_equal(roc.thresholds, thresholds)
        tar = [read[0] for read in read_tar_at_far(roc).values()]
        assert tar == reference.tpr_at_fpr(labels.astype(int), scores)


def test_an_fpr_equally_near_two_points_reads_the_first_of_the_reversed_curve():
    # 500,000 impostors: one impostor is FPR 2e-6, exactly as far from 1e-6 as FPR 0 is.
    n_negative, n_positive = 500_000, 8
    assert 1 / n_negative - 1e-6 == 1e-6 - 0.0
    labels = np.r_[np.ones(n_positive, dtype=bool), np.zeros(n_negative, dtype=bool)]
    scores = np.r_[[9, 8, 7, 5, 5, 3, 2, 1], 6, np.zeros(n_negative - 1)].astype(float)
    read = read_tar_at_far(roc_curve(labels, scores))
    # FPR 0 holds TPR 3/8, FPR 2e-6 up to 8/8; reversed, the higher FPR's best point comes first
    assert read[1e-6][:2] == (1.0, 2e-6)
    assert [value[0] for value in read.values()] == reference.tpr_at_fpr(labels.astype(int), scores)
    # several points at FPR 0 (the prepended (0, 0) among them): the highest TPR is read
    labels, scores = np.r_[True, True, True, False, False], np.array([5.0, 4, 3, 2, 1])
    assert read_tar_at_far(roc_curve(labels, scores), (1e-6,))[1e-6][0] == 1.0
    assert reference.tpr_at_fpr(labels.astype(int), scores)[0] == 1.0


def test_roc_refuses_a_set_without_impostors_or_genuine_pairs():
    with pytest.raises(ValueError, match="genuine and impostor"):
        roc_curve(np.ones(4, dtype=bool), np.arange(4.0))
    with pytest.raises(ValueError, match="genuine and impostor"):
        roc_curve(np.zeros(4, dtype=bool), np.arange(4.0))


def one_to_n_lists(plan):
    """((template per row, subject per row) of each gallery, and of the probes), per image row as the
    CSVs list them."""
    def rows_of(template_ids):
        rows = np.flatnonzero(np.isin(plan.templates, template_ids))
        return plan.templates[rows], plan.subjects[rows]
    return [rows_of(ids) for ids in plan.galleries.values()], rows_of(plan.probes)


@pytest.mark.parametrize("mode", [Mode(), Mode(False, False, 0), Mode(True, False, 1)], ids=lambda mode: mode.name)
def test_one_to_n_equals_ijb_evals(planned, mode):
    plan, embeddings, flipped, faceness = planned
    images = reference.image_input_features(np.concatenate((embeddings, flipped), 1), faceness, mode.keep_norm,
                                            mode.faceness, mode.flip > 0, concat=mode.flip == 1)
    galleries, (probe_rows, probe_subjects) = one_to_n_lists(plan)
    tops, mean_tpirs, per_gallery = reference.run_1n(images, plan.templates, plan.medias, galleries, probe_rows,
                                                     probe_subjects)
    pooling = TemplatePooling(plan.templates, plan.medias)
    pooled = pooling.pool(FeatureRows(embeddings, flipped), faceness, mode)
    probes = np.unique(probe_rows)
    probe_subject = np.array([plan.template_subject[int(t)] for t in probes])
    results = []
    for (gallery_rows, _), expected in zip(galleries, per_gallery):
        gallery = np.unique(gallery_rows)
        result = search_gallery("G", pooled[np.searchsorted(pooling.ids, probes)], probe_subject,
                                pooled[np.searchsorted(pooling.ids, gallery)],
                                np.array([plan.template_subject[int(t)] for t in gallery]))
        top1, top5, top10, thresholds, recalls = expected
        assert [result.cmc_counts[min(k, len(result.cmc_counts)) - 1] for k in (1, 5, 10)] == [top1, top5, top10]
        assert result.det_tpir.tolist() == recalls
        assert list(result.tpir_at_fpir.values()) == [recalls[50], recalls[75]]
        assert list(result.thresholds.values()) == [thresholds[50], thresholds[75]]
        results.append(result)
    found = [sum(r.cmc_counts[min(k, len(r.cmc_counts)) - 1] for r in results) / len(probes) for k in (1, 5, 10)]
    assert found == list(tops.values())
    assert [np.mean([r.tpir_at_fpir[f] for r in results]) for f in (0.01, 0.1)] == list(mean_tpirs[[50, 75]])


def test_one_to_n_ties_rank_as_a_stable_descending_sort_and_count_against_the_mate():
    # Features of halves and ones: every score is exact, so the ties below are ties in any product order.
    gallery = np.array([[1.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    subjects = np.array([10, 11, 12, 13, 14])
    probes = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0.5], [0, 0.5, 0.5], [1, 1, 0]])
    probe_subjects = np.array([10, 11, 13, 12, 99, 98, 14])
    result = search_gallery("G", probes, probe_subjects, gallery, subjects, fpirs=(0.01, 0.1, 0.5, 1.0))
    expected = reference.evaluation_1N(probes, gallery, probe_subjects, subjects, fars=(0.01, 0.1, 0.5, 1.0))
    # probe 0's mate (column 0) ties columns 1 and 3, which a stable reversed sort ranks first: found at
    # rank 3; probe 1's (column 1) ties 0 and 3: rank 2; probe 2's (column 3) ties 0 and 1: rank 1
    assert result.cmc_counts.tolist() == [2, 3, 4, 4, 5] and result.n_mated == 5
    assert [result.cmc_counts[min(k, 5) - 1] for k in (1, 5, 10)] == list(expected[:3])
    assert list(result.thresholds.values()) == expected[3] and list(result.tpir_at_fpir.values()) == expected[4]
    assert result.tpir_at_fpir[1.0] == 1 / 5  # only probe 3 beats every other column, strictly, and 0.5
    assert list(DET_FPIRS) == [10 ** ii for ii in np.arange(-4, 0, 4 / 100)] + [1]


def test_a_gallery_search_needs_mated_and_non_mated_probes():
    gallery, subjects = np.eye(3), np.arange(3)
    with pytest.raises(ValueError, match="non-mated"):
        search_gallery("G1", np.eye(3), np.arange(3), gallery, subjects)
    with pytest.raises(ValueError, match="no probe"):
        search_gallery("G1", np.eye(3), np.arange(5, 8), gallery, subjects)
    with pytest.raises(ValueError, match="at least 2"):
        search_gallery("G1", np.eye(3)[:, :1], np.arange(3), np.ones((1, 1)), np.arange(1))
    with pytest.raises(ValueError, match="several templates"):
        search_gallery("G1", np.eye(3), np.array([0, 1, 7]), gallery, np.array([0, 1, 1]))


def test_modes_parse_and_name_themselves():
    assert Mode.parse("n0d1f1") == Mode(False, True, 1) and Mode.parse("N1D1F2").name == "N1D1F2"
    for bad in ("N2D1F2", "F2D1N1", "N1D1F3", "N1D1"):
        with pytest.raises(ValueError, match="N{0,1}D{0,1}F{0,1,2}"):
            Mode.parse(bad)
    with pytest.raises(ValueError, match="F0"):
        image_features(np.ones((2, 3)), None, np.ones(2), Mode())
    assert FAR_TARGETS == tuple(reference.X_LABELS)


def test_pairs_read_off_the_one_to_n_products_score_as_eval_ijbc(planned):
    plan, embeddings, flipped, faceness = planned
    mode = Mode()
    _, templates, ids, _ = reference_scores(plan, embeddings, flipped, faceness, mode)
    # gallery x probe pairs both ways round, plus probe x probe pairs, which no search computes
    pairs = np.concatenate((plan.pairs, plan.pairs[::7, ::-1], np.stack((plan.probes[:-1], plan.probes[1:]), 1)))
    labels = np.concatenate((plan.labels, plan.labels[::7], np.zeros(len(plan.probes) - 1, dtype=bool)))
    expected = reference.verification(templates, ids, pairs[:, 0], pairs[:, 1])
    probes = np.unique(plan.probes)
    subject = np.vectorize(lambda t: plan.template_subject[int(t)])
    galleries = [(name, np.searchsorted(ids, rows), subject(rows)) for name, rows in plan.galleries.items()]
    scores, searches = scores_and_searches(templates, np.searchsorted(ids, pairs[:, 0]),
                                           np.searchsorted(ids, pairs[:, 1]), np.searchsorted(ids, probes),
                                           subject(probes), galleries, block_bytes=2000)  # blocks of a few probes
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-14)
    assert np.array_equal(np.equal.outer(scores, scores), np.equal.outer(expected, expected))
    tar = [read[0] for read in read_tar_at_far(roc_curve(labels, scores)).values()]
    assert tar == reference.tpr_at_fpr(labels.astype(int), expected)
    for (name, rows, subjects), search in zip(galleries, searches):
        alone = search_gallery(name, templates[np.searchsorted(ids, probes)], subject(probes), templates[rows],
                               subjects)
        assert search.cmc_counts.tolist() == alone.cmc_counts.tolist() and search.tpir_at_fpir == alone.tpir_at_fpir
        assert search.det_tpir.tolist() == alone.det_tpir.tolist()
