"""Landmarks of synthetic faces (SyntheticFaces.render_with_landmarks) and the synthetic IJB tree
writer (dataset/synthetic_ijb.py, tools/data/make_synthetic_ijb.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dataset import ARCFACE_TEMPLATE, align_face, read_image_file
from dataset.synthetic import VARIANTS, SyntheticFaces
from dataset.synthetic_ijb import loose_crop, plan_synthetic_ijb
from evaluation.ijb.meta import read_ijb_meta

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_render_with_landmarks_gives_the_render_image_and_points_on_the_drawn_features():
    faces = SyntheticFaces(seed=4, difficulty=0.6)
    for identity, index, variant in [(0, 0, "lfw"), (3, 2, "cfp"), (7, 5, "train"), (9, 1, "agedb")]:
        image, points = faces.render_with_landmarks(identity, index, variant)
        assert image.tobytes() == faces.render(identity, index, variant).tobytes()
        assert points.shape == (5, 2) and (points > 0).all() and (points < 112).all()
        left_eye, right_eye, nose, mouth_left, mouth_right = points
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0] or variant == "cfp"
    # Without nuisance the pupils (near-black discs) sit under the eye points.
    image, points = SyntheticFaces(seed=1, difficulty=0.0).render_with_landmarks(2, 0)
    for x, y in points[:2]:
        assert image[int(round(y)), int(round(x))].max() < 60
    assert set(VARIANTS) == {"lfw", "cfp", "agedb", "train"}


def test_a_loose_crop_aligns_back_to_the_face_its_landmarks_came_from():
    faces = SyntheticFaces(seed=2, difficulty=0.3)
    rng = np.random.default_rng(0)
    for identity in range(4):
        face, points = faces.render_with_landmarks(identity, 0, "train")
        crop, moved = loose_crop(face, points, rng)
        assert crop.shape[0] >= 150 and crop.shape[1] >= 150
        direct, via_crop = align_face(face, points), align_face(crop, moved)
        centre = (slice(24, 88), slice(24, 88))  # inside the rendered square in both
        assert np.abs(direct[centre].astype(int) - via_crop[centre]).mean() < 8  # the same face, resampled
    assert ARCFACE_TEMPLATE.shape == (5, 2)


@pytest.mark.slow
def test_the_tool_writes_a_tree_the_evaluation_reads(tmp_path):
    finished = subprocess.run([sys.executable, os.path.join(REPO, "tools", "data", "make_synthetic_ijb.py"),
                               tmp_path / "IJBB", "--set", "ijbb", "--subjects", "4", "--probes-per-subject", "1"],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr
    meta = read_ijb_meta(tmp_path / "IJBB", "ijbb")
    plan = plan_synthetic_ijb(subjects=4, probes_per_subject=1, unenrolled_subjects=2)
    assert list(meta.names) == plan.names and [g.name for g in meta.galleries] == ["S1", "S2"]
    image = read_image_file(tmp_path / "IJBB" / "loose_crop" / meta.names[0])
    assert image.shape[0] >= 150 and len(os.listdir(tmp_path / "IJBB" / "loose_crop")) == len(set(plan.names))
    assert finished.stdout.startswith(f"{tmp_path / 'IJBB'}: {len(plan.names)} images")
