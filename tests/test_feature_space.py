"""tools/model/feature_space.py and its experiment, training/feature_space.py, at toy sizes: the files
it writes, the geometry helpers, and that the center loss does what Wen et al. (ECCV 2016) built it
for: tighter classes than softmax alone."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.synthetic import SyntheticFaces

from training import feature_space

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "model"))

import feature_space as feature_space_tool  # noqa: E402


@pytest.fixture
def one_thread():
    """The tool trains on one thread; so do these tests, then they restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
def test_tool_writes_animations_with_the_requested_frames_and_the_theta_plot(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "model", "feature_space.py"), "--out", str(tmp_path),
         "--classes", "3", "--images-per-class", "8", "--plot-images-per-class", "4",
         "--epochs", "2", "--wide-epochs", "1", "--frames", "3"],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for name in ("softmax", "softmax_center", "arcface"):
        with Image.open(tmp_path / f"{name}.gif") as gif:
            assert gif.format == "GIF" and gif.is_animated
            assert gif.n_frames == 3
            first = np.asarray(gif.convert("RGB"))
            gif.seek(gif.n_frames - 1)
            last = np.asarray(gif.convert("RGB"))
        assert first.shape == last.shape and not np.array_equal(first, last)  # training moved things
    with Image.open(tmp_path / "theta_distributions.png") as png:
        assert png.format == "PNG" and png.width > 600 and png.height > 400


def test_tool_rejects_a_bad_class_count(tmp_path, capsys):
    # in this process: the command line itself is run by the test above
    with pytest.raises(SystemExit) as refused:
        feature_space_tool.main(["--out", str(tmp_path), "--classes", "1"])
    assert refused.value.code != 0 and "--classes must lie in [2, 20], got 1" in capsys.readouterr().err


@pytest.mark.parametrize("total_steps, frames", [(570, 40), (2, 3), (10, 2)])
def test_frame_steps_span_training_and_crowd_the_start(total_steps, frames):
    steps = feature_space.frame_steps(total_steps, frames)
    assert len(steps) == frames and steps[0] == 0 and steps[-1] == total_steps
    gaps = np.diff(steps)
    assert (gaps >= 1).all() and gaps[0] <= gaps[-1]


def test_train_rejects_more_frames_than_steps():
    images, labels = torch.zeros(4, 3, 48, 48), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"frames must lie in \[2, 2\] for 1 epoch\(s\) of 1 step"):
        feature_space.train(feature_space.ANIMATED_RUNS[0], (images, labels), (images, labels),
                            epochs=1, frames=3, seed=0)


def test_training_set_one_past_a_whole_batch_trains(one_thread):
    # 65 images at batch size 64: a batch of one would make BatchNorm raise in training mode.
    images = torch.randn(65, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(65) % 2
    run = feature_space.ANIMATED_RUNS[2]
    assert run.normalized_output
    trajectory = feature_space.train(run, (images, labels), (images, labels), epochs=1, frames=3, seed=0)
    assert trajectory.epochs == [0.0, 0.5, 1.0] and np.isfinite(trajectory.features[-1]).all()


def test_angles_to_centres_by_hand():
    # Centres along 0, 90 and 180 degrees, of different lengths: only directions count.
    centres = np.array([[2.0, 0.0], [0.0, 0.5], [-3.0, 0.0]])
    degrees = np.radians([10.0, 100.0, 200.0])
    features = 4.0 * np.stack([np.cos(degrees), np.sin(degrees)], axis=1)
    own, nearest_other = feature_space.angles_to_centres(features, centres, np.array([0, 1, 0]))
    np.testing.assert_allclose(own, [10.0, 10.0, 160.0], atol=1e-9)
    np.testing.assert_allclose(nearest_other, [80.0, 80.0, 20.0], atol=1e-9)


def test_cluster_spread_by_hand():
    # Two classes with means 10 apart; every feature 1 from its class mean.
    features = np.array([[-1.0, 0.0], [1.0, 0.0], [10.0, 1.0], [10.0, -1.0]])
    assert feature_space.cluster_spread(features, np.array([0, 0, 1, 1])) == pytest.approx(0.1)


def test_center_loss_tightens_classes_that_softmax_alone_leaves_spread(one_thread):
    faces = SyntheticFaces(seed=0, difficulty=0.3)
    train_set = feature_space.render_identities(faces, num_classes=3, first_index=0, count=40)
    softmax, with_center = (feature_space.train(run, train_set, train_set, epochs=10, frames=2, seed=0,
                                                batch_size=16)
                            for run in feature_space.ANIMATED_RUNS[:2])
    assert with_center.run.center_weight > 0 and softmax.run.center_weight == 0
    labels = train_set[1].numpy()
    # Both fit the three identities; only the center loss pulls each class together (seed 0:
    # 0.059 against 0.113; seeds 0-4 gave ratios of 0.46-0.76).  Without it the two runs are
    # identical, since they share the seed, and this fails.
    assert softmax.accuracies[-1] >= 0.9 and with_center.accuracies[-1] >= 0.9
    spread = feature_space.cluster_spread(softmax.features[-1], labels)
    tightened = feature_space.cluster_spread(with_center.features[-1], labels)
    assert tightened < 0.8 * spread
