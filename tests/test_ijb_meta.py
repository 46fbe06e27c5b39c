"""evaluation/ijb/meta.py: the IJB metadata read as the references read it (their readers re-stated in
tests/ijb_reference.py), whatever the whitespace, and every malformed input named by file and line."""

import os

import numpy as np
import pytest

import ijb_reference as reference
from dataset.synthetic_ijb import write_synthetic_ijb
from evaluation.ijb import text as ijb_text
from evaluation.ijb.features import load_ijb_features
from evaluation.ijb.meta import (read_ijb_meta, read_landmarks, read_one_to_n_list, read_template_media,
                                 read_template_pairs)
from runtime import DataFormatError, save_npz


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    plan = write_synthetic_ijb(root, "ijbc", subjects=6, probes_per_subject=2, seed=3, images=False)
    return root, plan


def meta_file(root, name):
    return os.path.join(root, "meta", name)


def test_readers_agree_with_the_references(tree):
    root, plan = tree
    names, templates, medias = read_template_media(meta_file(root, "ijbc_face_tid_mid.txt"))
    expected_templates, expected_medias = reference.read_template_media_list(meta_file(root, "ijbc_face_tid_mid.txt"))
    assert np.array_equal(templates, expected_templates) and np.array_equal(medias, expected_medias)
    assert list(names) == plan.names
    first, second, labels = read_template_pairs(meta_file(root, "ijbc_template_pair_label.txt"))
    expected = reference.read_template_pair_list(meta_file(root, "ijbc_template_pair_label.txt"))
    assert np.array_equal(first, expected[0]) and np.array_equal(second, expected[1])
    assert np.array_equal(labels, expected[2] == 1)
    _, landmarks, faceness = read_landmarks(meta_file(root, "ijbc_name_5pts_score.txt"))
    expected_landmarks, expected_faceness = reference.read_landmarks_and_faceness(
        meta_file(root, "ijbc_name_5pts_score.txt"))
    assert landmarks.dtype == faceness.dtype == np.float32
    assert np.array_equal(landmarks, expected_landmarks) and np.array_equal(faceness, expected_faceness)
    for name in ("ijbc_1N_gallery_G1.csv", "ijbc_1N_gallery_G2.csv", "ijbc_1N_probe_mixed.csv"):
        ids, subjects, lines = read_one_to_n_list(meta_file(root, name))
        expected_ids, expected_subjects = reference.read_1n_csv(meta_file(root, name))
        assert np.array_equal(ids, expected_ids) and np.array_equal(subjects, expected_subjects)
        assert lines[0] == 2  # the header is line 1
    meta = read_ijb_meta(root, "ijbc")
    assert [g.name for g in meta.galleries] == ["G1", "G2"] and len(meta.probes.templates) == len(plan.probes)


def test_numbers_read_as_float_and_int_read_them_in_any_spacing(tmp_path):
    rng = np.random.default_rng(0)
    tokens = [f"{value:.{digits}f}" for value, digits in zip(rng.uniform(-3000, 3000, 2200), rng.integers(0, 7, 2200))]
    tokens[:8] = ["+3.25", "-.5", "7.", "1e-3", "0.1234567890123456789", "-0.000", "12345678", "nan"]
    lines = [f"im{i}.jpg" + "\t" * (i % 2) + " " + "  ".join(tokens[11 * i:11 * i + 11])
             + ("\r\n" if i % 3 else "\n") + ("\n" if i % 5 == 0 else "") for i in range(1, 200)]
    path = tmp_path / "points.txt"
    path.write_text("".join(lines))
    names, landmarks, faceness = read_landmarks(path)
    values = np.array([[float(t) for t in tokens[11 * i:11 * i + 11]] for i in range(1, 200)])
    assert len(names) == 199 and names[0] == "im1.jpg"
    assert np.array_equal(landmarks.reshape(-1, 10), values[:, :10].astype(np.float32))
    assert np.array_equal(faceness, values[:, 10].astype(np.float32))
    ids = rng.integers(0, 10 ** 12, (500, 2))
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f" {a}\t{b}  {a % 2}\r\n" for a, b in ids))
    first, second, labels = read_template_pairs(path)
    assert first.dtype == np.int64 and np.array_equal(first, ids[:, 0]) and np.array_equal(second, ids[:, 1])
    assert np.array_equal(labels, ids[:, 0] % 2 == 1)


def test_a_long_file_reads_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(ijb_text, "CHUNK_BYTES", 64)  # many blocks, lines cut at block ends
    ids = np.arange(3000).reshape(-1, 3)
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{a} {b} {c % 2}\n" for a, b, c in ids) + "1 2 7\n")
    with pytest.raises(DataFormatError, match=r"pairs.txt, line 1001: label must be 0 or 1, got 7"):
        read_template_pairs(path)
    path.write_text("".join(f"{a} {b} {c % 2}\n" for a, b, c in ids))
    first, second, labels = read_template_pairs(path)
    assert first.dtype == np.int32 and np.array_equal(first, ids[:, 0]) and np.array_equal(labels, ids[:, 2] % 2 == 1)


@pytest.mark.parametrize("name, line, expected", [
    ("ijbc_face_tid_mid.txt", "1.jpg 5", r"ijbc_face_tid_mid.txt, line 3: expected 3 fields \(image template_id "
                                         r"media_id\), got 2; the line reads '1.jpg 5'"),
    ("ijbc_face_tid_mid.txt", "1.jpg five 6", r"line 3: template_id and media_id must be an integer, got 'five'"),
    ("ijbc_template_pair_label.txt", "4 5 2", r"ijbc_template_pair_label.txt, line 3: label must be 0 or 1, got 2"),
    ("ijbc_template_pair_label.txt", "4 5", r"line 3: expected 3 fields"),
    ("ijbc_name_5pts_score.txt", "1.jpg 1 2 3 4 5 6 7 8 9 x 0.9", r"line 3: a landmark coordinate or faceness must "
                                                                  r"be a number, got 'x'"),
    ("ijbc_name_5pts_score.txt", "1.jpg 1 2 3 4 5 6 7 8 9 10 nan", r"line 3: landmarks and faceness must be finite"),
    ("ijbc_1N_probe_mixed.csv", "12", r"ijbc_1N_probe_mixed.csv, line 3: expected at least 2 comma-separated columns"),
    ("ijbc_1N_probe_mixed.csv", "12,x7,a.jpg", r"line 3: the subject id \(column 2\) must be an integer, got 'x7'"),
])
def test_a_malformed_line_is_named_by_file_and_line(tree, tmp_path, name, line, expected):
    path = tmp_path / name
    original = open(meta_file(tree[0], name)).read().splitlines()
    path.write_text("\n".join(original[:2] + [line] + original[2:]) + "\n")
    reader = {"ijbc_face_tid_mid.txt": read_template_media, "ijbc_template_pair_label.txt": read_template_pairs,
              "ijbc_name_5pts_score.txt": read_landmarks, "ijbc_1N_probe_mixed.csv": read_one_to_n_list}[name]
    with pytest.raises(DataFormatError, match=expected):
        reader(path)


def copy_tree(tree, tmp_path):
    root = tmp_path / "IJBC"
    (root / "meta").mkdir(parents=True)
    for name in os.listdir(os.path.join(tree[0], "meta")):
        (root / "meta" / name).write_text(open(meta_file(tree[0], name)).read())
    return root


def test_inconsistent_files_are_refused_naming_the_file(tree, tmp_path):
    root = copy_tree(tree, tmp_path)
    points = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points[1:] + points[:1]) + "\n")
    with pytest.raises(DataFormatError, match=r"ijbc_name_5pts_score.txt: image 1 is .* the rows must match"):
        read_ijb_meta(root, "ijbc")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points[:-1]) + "\n")
    with pytest.raises(DataFormatError, match=rf"lists {len(points) - 1} images, .* lists {len(points)}"):
        read_ijb_meta(root, "ijbc")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    probe = (root / "meta" / "ijbc_1N_probe_mixed.csv").read_text().splitlines()
    template, subject, image = probe[2].split(",")
    (root / "meta" / "ijbc_1N_probe_mixed.csv").write_text("\n".join(probe + [f"{template},{int(subject) + 1},x"]))
    with pytest.raises(DataFormatError, match=rf"probe_mixed.csv, line {len(probe) + 1}: template {template} is "
                                              rf"listed with subject {int(subject) + 1} here and {subject} on line"):
        read_ijb_meta(root, "ijbc")
    os.remove(root / "meta" / "ijbc_1N_probe_mixed.csv")
    with pytest.raises(DataFormatError, match=r"ijbc_1N_probe_mixed.csv: 1:N list not found"):
        read_ijb_meta(root, "ijbc")
    for name in os.listdir(root / "meta"):
        if "_1N_" in name:
            os.remove(root / "meta" / name)
    assert read_ijb_meta(root, "ijbc").probes is None  # a set without 1:N lists is read for 1:1 only
    with pytest.raises(DataFormatError, match=r"no meta folder: --root must be the folder holding meta/"):
        read_ijb_meta(tmp_path, "ijbc")
    os.remove(root / "meta" / "ijbc_template_pair_label.txt")
    with pytest.raises(DataFormatError, match=r"ijbc_template_pair_label.txt: IJB metadata file not found"):
        read_ijb_meta(root, "ijbc")


def test_features_files_are_read_mapped_or_whole_and_checked(tree, tmp_path):
    n = len(tree[1].names)
    rng = np.random.default_rng(1)
    embeddings, flipped = rng.standard_normal((2, n, 6)).astype(np.float32)
    save_npz(tmp_path / "plain.npz", embeddings=embeddings, embeddings_flip=flipped)
    np.savez_compressed(tmp_path / "packed.npz", embeddings=embeddings, missing=np.arange(n) == 3)
    features, missing = load_ijb_features(tmp_path / "plain.npz", n)
    rows = np.array([5, 0, 7, 7, n - 1])
    assert type(features.embeddings).__name__ == "MappedRows" and missing is None
    assert np.array_equal(features.take(rows)[0], embeddings[rows]) and np.array_equal(features.take(rows)[1],
                                                                                     flipped[rows])
    spread = np.array([0, n - 1])  # rows far apart: read through a memory map instead of one span
    assert np.array_equal(features.take(spread)[0], embeddings[spread])
    features, missing = load_ijb_features(tmp_path / "packed.npz", n)
    assert np.array_equal(features.take(rows)[0], embeddings[rows]) and features.flipped is None
    assert missing.tolist() == (np.arange(n) == 3).tolist()
    save_npz(tmp_path / "short.npz", embeddings=embeddings[:-1])
    with pytest.raises(DataFormatError, match=rf"short.npz: embeddings has {n - 1} rows, the 5-point file lists {n}"):
        load_ijb_features(tmp_path / "short.npz", n)
    save_npz(tmp_path / "other.npz", features=embeddings)
    with pytest.raises(DataFormatError, match=r"other.npz: no array embeddings in the archive \(it holds features"):
        load_ijb_features(tmp_path / "other.npz", n)
    save_npz(tmp_path / "ints.npz", embeddings=np.ones((n, 3), dtype=np.int32))
    with pytest.raises(DataFormatError, match=r"embeddings must be a float \[N, D\] array, got dtype int32"):
        load_ijb_features(tmp_path / "ints.npz", n)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataFormatError, match=r"junk.npz: not a readable .npz archive"):
        load_ijb_features(tmp_path / "junk.npz", n)


def test_scoring_saved_features_needs_no_landmarks(tree):
    meta = read_ijb_meta(tree[0], "ijbc", landmarks=False)
    full = read_ijb_meta(tree[0], "ijbc")
    assert meta.landmarks is None and np.array_equal(meta.faceness, full.faceness) and full.landmarks.shape[1:] == (5, 2)
