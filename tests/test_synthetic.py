"""Synthetic faces (dataset/synthetic.py) and their writer (tools/data/make_synthetic.py)."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dataset import RecordDataset, load_bin
from dataset.synthetic import (DEFAULT_DIFFICULTY, PAIR_KINDS, VARIANTS, SyntheticFaces,
                               identity_ranges, identity_traits, make_pairs, plan_pairs, render_pairs)
from evaluation.verification import raw_pixel_baseline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    requests = [(identity, index, variant) for identity in (0, 7) for index in (0, 3)
                for variant in VARIANTS]
    first = [SyntheticFaces(seed=11).render(*r) for r in requests]
    identity_traits.cache_clear()  # the second pass rebuilds every identity from its seed
    second = [SyntheticFaces(seed=11).render(*r) for r in requests]
    other = [SyntheticFaces(seed=12).render(*r) for r in requests]
    for a, b, c in zip(first, second, other):
        assert a.shape == (112, 112, 3) and a.dtype == np.uint8
        assert a.tobytes() == b.tobytes()
        assert np.abs(a.astype(int) - c).mean() > 10


def test_images_do_not_depend_on_the_order_they_are_requested_in():
    faces = SyntheticFaces(seed=5)
    requests = [(identity, index, variant) for identity in range(4) for index in range(3)
                for variant in ("lfw", "cfp", "agedb")]
    in_order = {r: faces.render(*r) for r in requests}
    identity_traits.cache_clear()
    shuffled = [requests[i] for i in np.random.default_rng(0).permutation(len(requests))]
    fresh = SyntheticFaces(seed=5)
    for r in shuffled:
        np.testing.assert_array_equal(fresh.render(*r), in_order[r])
    # Every request is its own image: no two of the 36 coincide.
    assert len({image.tobytes() for image in in_order.values()}) == len(requests)


def test_identity_is_all_that_remains_at_difficulty_zero():
    faces = SyntheticFaces(seed=2, difficulty=0.0)
    for identity in range(5):
        reference = faces.render(identity, 0)
        for index in (1, 2, 9):
            np.testing.assert_array_equal(faces.render(identity, index), reference)
    # Any two of 40 identities differ visibly: traits alone move many pixels.
    images = np.stack([faces.render(identity, 0) for identity in range(40)]).astype(np.float32)
    distances = np.abs(images[:, None] - images[None]).mean(axis=(2, 3, 4))
    assert distances[~np.eye(40, dtype=bool)].min() > 4.0


@pytest.mark.slow
def test_identity_survives_mild_nuisance_and_raw_pixels_lose_it_at_the_default():
    # The same pairs under a smooth knob: raw pixels still tell identities apart when nuisance
    # is mild and fall to near chance at the default, which is what makes training necessary.
    accuracy = {}
    for difficulty in (0.1, 0.3, DEFAULT_DIFFICULTY):
        images, issame = make_pairs("lfw", 600, 10_000, 300, seed=4, difficulty=difficulty)
        accuracy[difficulty] = raw_pixel_baseline(images, issame)
    assert accuracy[0.1] >= 0.9
    assert accuracy[0.1] > accuracy[0.3] > accuracy[DEFAULT_DIFFICULTY]
    assert accuracy[DEFAULT_DIFFICULTY] <= 0.70


@pytest.mark.parametrize("kind", ["cfp", "agedb"])
def test_raw_pixel_baseline_of_pose_and_age_sets_is_low_at_the_default(kind):
    images, issame = make_pairs(kind, 600, 20_000, 300, seed=4)
    assert raw_pixel_baseline(images, issame) <= 0.70


def test_raw_pixel_baseline_follows_the_protocol_on_known_pairs():
    # Matched pairs are two copies of an image, unmatched pairs an image and its negative in
    # network scale (cosine -1): any threshold between the two distances is perfect.
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (20, 112, 112, 3)).astype(np.uint8)
    issame = np.tile(np.repeat([True, False], 1), 10)
    second = np.where(issame[:, None, None, None], base, 255 - base)
    images = np.stack([base, second], 1).reshape(-1, 112, 112, 3)
    assert raw_pixel_baseline(images, issame) == 1.0
    # With the labels swapped no threshold beats calling every pair unmatched: half right.
    assert raw_pixel_baseline(images, ~issame) == 0.5


def test_pairs_follow_the_real_fold_layout():
    plan = plan_pairs("cfp", 700, first_identity=300, num_identities=40, seed=1)
    assert plan.variants == PAIR_KINDS["cfp"] == ("lfw", "cfp")
    folds = plan.issame.reshape(10, 70)
    assert folds[:, :35].all() and not folds[:, 35:].any()  # matched half first, every fold
    same_identity = plan.identities[:, 0] == plan.identities[:, 1]
    np.testing.assert_array_equal(same_identity, plan.issame)
    assert plan.identities.min() >= 300 and plan.identities.max() < 340
    assert len(np.unique(plan.identities)) > 35  # the draw spreads over the range
    assert len(np.unique(plan.indices)) == plan.indices.size  # no image is used twice
    images = render_pairs(SyntheticFaces(1), plan, 0, 3)
    assert images.shape == (6, 112, 112, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], SyntheticFaces(1).render(
        int(plan.identities[1, 1]), int(plan.indices[1, 1]), "cfp"))


def test_make_pairs_shapes_and_held_out_ranges_are_disjoint():
    images, issame = make_pairs("agedb", 20, 50, 10, seed=0)
    assert images.shape == (40, 112, 112, 3) and images.dtype == np.uint8
    assert issame.dtype == bool and issame.shape == (20,) and issame.sum() == 10
    ranges = identity_ranges(train_identities=100, held_out_identities=30)
    assert list(ranges) == ["train", *PAIR_KINDS]
    seen = set()
    for kind, identities in ranges.items():
        assert not seen & set(identities)
        seen |= set(identities)
        if kind != "train":
            plan = plan_pairs(kind, 200, identities.start, len(identities))
            assert set(plan.identities.ravel()) <= set(identities)
    assert seen == set(range(190))


def test_bad_arguments_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="30"):
        plan_pairs("lfw", 30, 0, 10)
    with pytest.raises(ValueError, match="'megaface'.*agedb.*cfp.*lfw"):
        plan_pairs("megaface", 20, 0, 10)
    with pytest.raises(ValueError, match="'profile'.*agedb.*cfp.*lfw.*train"):
        SyntheticFaces().render(0, 0, "profile")
    with pytest.raises(ValueError, match="1.5"):
        SyntheticFaces(difficulty=1.5)
    with pytest.raises(ValueError, match="num_identities"):
        plan_pairs("lfw", 20, 0, 1)


def run_tool(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "data", "make_synthetic.py"),
                           *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow
def test_make_synthetic_writes_a_pack_and_bins_that_read_back(tmp_path):
    out, grid = tmp_path / "data", tmp_path / "grid.png"
    result = run_tool(out, "--identities", 4, "--images-per-identity", 3, "--lfw-pairs", 20,
                      "--agedb-pairs", 40, "--cfp-pairs", 20, "--held-out-identities", 6,
                      "--seed", 3, "--workers", 2, "--grid", grid)
    assert result.returncode == 0, result.stderr
    faces = SyntheticFaces(seed=3)
    pack = RecordDataset(out)
    assert len(pack) == 12 and pack.num_classes == 4
    assert pack.labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    image, label = pack[7]
    assert label == 2
    # JPEG at quality 95 keeps the rendered image to within a few levels.
    assert np.abs(image.astype(int) - faces.render(2, 1, "train")).mean() < 3
    ranges = identity_ranges(4, 6)
    for name, kind, num_pairs in (("lfw.bin", "lfw", 20), ("agedb_30.bin", "agedb", 40),
                                  ("cfp_fp.bin", "cfp", 20)):
        images, issame = load_bin(out / name)
        plan = plan_pairs(kind, num_pairs, ranges[kind].start, 6, seed=3)
        np.testing.assert_array_equal(issame, plan.issame)
        assert images.shape == (2 * num_pairs, 112, 112, 3)
        assert np.abs(images.astype(int) - render_pairs(faces, plan)).mean() < 3
        assert f"{name}: {num_pairs} pairs of identities {ranges[kind].start}.." in result.stdout
        assert "raw-pixel baseline" in result.stdout
    # Six rows at most of training identities (here all four), then a CFP and an AgeDB row.
    assert cv2.imread(str(grid)).shape == (4 + 6 * 116, 8 * 116 + 16, 3)


@pytest.mark.slow
def test_make_synthetic_writes_its_picture_into_the_output_folder(tmp_path):
    tracked = os.path.join(REPO, "result", "synthetic_grid.png")
    before = os.stat(tracked).st_mtime_ns if os.path.exists(tracked) else None
    result = run_tool(tmp_path / "data", "--identities", 2, "--images-per-identity", 1, "--lfw-pairs", 0,
                      "--agedb-pairs", 0, "--cfp-pairs", 0, "--held-out-identities", 2, "--workers", 1)
    assert result.returncode == 0, result.stderr
    assert cv2.imread(str(tmp_path / "data" / "synthetic_grid.png")).shape == (4 + 4 * 116, 8 * 116 + 16, 3)
    assert f"picture -> {tmp_path / 'data' / 'synthetic_grid.png'}" in result.stdout
    assert (os.stat(tracked).st_mtime_ns if os.path.exists(tracked) else None) == before  # the README's is untouched


def test_make_synthetic_refuses_bad_arguments(tmp_path, capsys):
    # in this process: the two tests above run the command line itself
    from tools.data.make_synthetic import main as make_synthetic_main
    with pytest.raises(SystemExit) as refused:
        make_synthetic_main([str(tmp_path), "--lfw-pairs", "30"])
    stderr = capsys.readouterr().err
    assert refused.value.code != 0 and "--lfw-pairs" in stderr and "30" in stderr
    with pytest.raises(SystemExit) as refused:
        make_synthetic_main([str(tmp_path), "--difficulty", "2"])
    assert refused.value.code != 0 and "--difficulty" in capsys.readouterr().err
    assert not os.listdir(tmp_path)
