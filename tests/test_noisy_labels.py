"""Noisy labels: the flips make_synthetic.py --label-noise writes and records, sub-center ArcFace's
max-pooled cosine and its dominant sub-centres, and tools/data/clean_labels.py end to end against the
recorded flips."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset import RecordDataset
from dataset.label_noise import flip_labels, read_flips, write_flips
from margin import angles_to_dominant, build_margin, dominant_subcentres
from runtime import DataFormatError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flips_are_exactly_the_fraction_each_to_another_class_and_a_function_of_the_seed():
    labels = np.repeat(np.arange(50), 8)
    noisy = flip_labels(labels, 0.4, 50, seed=3)
    changed = noisy != labels
    assert changed.sum() == round(0.4 * 400)  # every chosen label moves: never to its own class
    assert noisy.min() >= 0 and noisy.max() < 50
    assert np.array_equal(noisy, flip_labels(labels, 0.4, 50, seed=3))
    assert not np.array_equal(noisy, flip_labels(labels, 0.4, 50, seed=4))
    assert np.array_equal(flip_labels(labels, 0.0, 50, seed=3), labels)
    # Uniform over the other classes: the new label's offset from the true one covers 1..49 evenly.
    offsets = (noisy[changed] - labels[changed]) % 50
    assert offsets.min() >= 1 and len(np.unique(offsets)) > 40
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        flip_labels(labels, 1.0, 50, seed=0)


def test_the_flips_file_round_trips_and_a_bad_line_is_named(tmp_path):
    true = np.array([0, 0, 1, 1, 2, 2])
    stored = np.array([0, 2, 1, 1, 0, 2])
    path = tmp_path / "label_flips.tsv"
    assert write_flips(path, true, stored) == 2
    assert path.read_text() == "key\ttrue_label\tstored_label\n2\t0\t2\n5\t2\t0\n"
    assert read_flips(path) == {2: (0, 2), 5: (2, 0)}
    path.write_text("key\ttrue_label\tstored_label\n2\t0\t2\n5\ttwo\t0\n")
    with pytest.raises(DataFormatError, match=r"label_flips.tsv, line 3: expected three tab-separated integers"):
        read_flips(path)


def test_make_synthetic_label_noise_stores_the_flipped_labels_it_records(tmp_path):
    out = tmp_path / "noisy"
    run = subprocess.run([sys.executable, "tools/data/make_synthetic.py", str(out), "--identities", "6",
                          "--images-per-identity", "5", "--label-noise", "0.2", "--lfw-pairs", "0", "--agedb-pairs", "0",
                          "--cfp-pairs", "0", "--grid", "", "--workers", "1"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "train.rec: 6 of 30 labels flipped" in run.stdout
    stored = RecordDataset(out).labels()
    true = np.repeat(np.arange(6), 5)
    flips = read_flips(out / "label_flips.tsv")
    assert sorted(flips) == [i + 1 for i in np.flatnonzero(stored != true)] and len(flips) == 6
    assert all(stored[key - 1] == new and true[key - 1] == old for key, (old, new) in flips.items())
    bad = subprocess.run([sys.executable, "tools/data/make_synthetic.py", str(tmp_path / "x"), "--label-noise", "1"],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].endswith("--label-noise must lie in [0, 1), got 1.0")


def test_subcenter_cosine_is_the_best_sub_centre_and_k1_is_arcface():
    torch.manual_seed(0)
    head = build_margin("subcenter_arcface", 8, 5, k=3).double()
    assert head.weight.shape == (5, 3, 8)
    x = torch.randn(4, 8, dtype=torch.float64)
    labels = torch.tensor([0, 4, 2, 2])
    expected = torch.stack([torch.stack([max(F.cosine_similarity(x[i], head.weight[c, k], dim=0) for k in range(3))
                                         for c in range(5)]) for i in range(4)])
    torch.testing.assert_close(head.cosine(x), expected.detach(), rtol=1e-12, atol=1e-14)
    sampled = torch.tensor([1, 2, 4])
    torch.testing.assert_close(head.cosine(x, sampled), expected[:, sampled].detach(), rtol=1e-12, atol=1e-14)
    one = build_margin("subcenter_arcface", 8, 5, k=1, s=32.0, m=0.3).double()
    arcface = build_margin("arcface", 8, 5, s=32.0, m=0.3).double()
    with torch.no_grad():
        arcface.weight.copy_(one.weight[:, 0])
    torch.testing.assert_close(one(x, labels), arcface(x, labels), rtol=0, atol=0)
    with pytest.raises(ValueError, match="k .*int >= 1, got 0"):
        build_margin("subcenter_arcface", 8, 5, k=0)


def test_the_dominant_sub_centre_is_the_one_most_images_are_nearest():
    directions = torch.eye(4, dtype=torch.float64)
    weight = torch.stack([directions[[0, 1, 2]], directions[[3, 2, 1]]])  # 2 classes x 3 sub-centres, 4-d
    near = lambda axis, tilt: F.normalize(directions[axis] + tilt * directions[(axis + 1) % 4], dim=0)
    embeddings = torch.stack([near(2, 0.1), near(2, 0.2), near(0, 0.1),  # class 0: two at sub-centre 2, one at 0
                              near(3, 0.1), near(1, 0.3)])                 # class 1: one at sub-centre 0, one at 2
    labels = torch.tensor([0, 0, 0, 1, 1])
    centres, counts = dominant_subcentres(weight, embeddings, labels)
    assert counts.tolist() == [[1, 0, 2], [1, 0, 1]]
    torch.testing.assert_close(centres, directions[[2, 3]].float())  # class 1's tie: the lower index
    angles, dominant = angles_to_dominant(weight, embeddings, labels)
    torch.testing.assert_close(dominant, centres)
    assert angles[2].item() == pytest.approx(90.0, abs=1e-9)  # the image on class 0's other sub-centre
    assert angles[0].item() == pytest.approx(math.degrees(math.atan(0.1)), abs=1e-9)
    plain, _ = dominant_subcentres(weight[:, 0], embeddings, labels)  # a plain head: its centre itself
    torch.testing.assert_close(plain, weight[:, 0].float())


@pytest.mark.slow
def test_clean_labels_lists_a_subcenter_run_farthest_first_and_counts_against_the_flips(tmp_path):
    """A short sub-center run on 40% flipped labels, then the tool with the record: the list is sorted
    farthest first, holds only images beyond --max-angle, and its counts, precision and dominant
    centres agree with the files. (How well it finds the flips takes a real run: docs/noisy-labels.md.)"""
    data = tmp_path / "noisy"
    subprocess.run([sys.executable, "tools/data/make_synthetic.py", str(data), "--identities", "8",
                    "--images-per-identity", "12", "--label-noise", "0.4", "--lfw-pairs", "0", "--agedb-pairs", "0",
                    "--cfp-pairs", "0", "--grid", "", "--workers", "1"], cwd=REPO, check=True, capture_output=True)
    run = subprocess.run([sys.executable, "train.py", "configs/noisy_labels.py", "--", f"--train_data={data}",
                          "--val_sets=", f"--output_dir={tmp_path}", "--name=sub", "--head=subcenter_arcface",
                          "--batch_size=32", "--max_steps=10", "--workers=0", "--visdom=false", "--progress=false",
                          "--precision=fp32", "--eval_at_start=false"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    clean = subprocess.run([sys.executable, "tools/data/clean_labels.py", str(tmp_path / "sub"), str(data),
                            "--flips", str(data / "label_flips.tsv"), "--centres", str(tmp_path / "centres.npy"),
                            "--max-angle", "5"], cwd=REPO, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr[-2000:]
    result = json.loads(clean.stdout.strip().splitlines()[-1])
    flips = read_flips(data / "label_flips.tsv")
    assert result["images"] == 96 and result["flipped"] == len(flips) == round(0.4 * 96) and result["sub_centres"] == 3
    listed = (tmp_path / "sub" / "suspect_labels.tsv").read_text().splitlines()
    assert listed[0] == "key\tlabel\tangle" and len(listed) - 1 == result["suspect"] >= len(flips)
    rows = [line.split("\t") for line in listed[1:]]
    angles = [float(row[2]) for row in rows]
    assert angles == sorted(angles, reverse=True) and min(angles) > 5
    assert result["found"] == len({int(row[0]) for row in rows} & set(flips))
    assert result["precision"] == pytest.approx(result["found"] / result["suspect"])
    assert np.load(tmp_path / "centres.npy").shape == (8, 128)
