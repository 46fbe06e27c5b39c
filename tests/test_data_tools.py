"""The conversion tools on real files: each tool runs once as a user runs it (a subprocess); the other
calls of a tool run its main in this process."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dataset import RecordDataset, image_files, load_bin, read_pairs, write_bin, write_record_pack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(name, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "data", name), *map(str, args)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def images2rec(*args):
    """tools/data/images2rec.py's main in this process."""
    from tools.data.images2rec import main
    main([str(arg) for arg in args])


def images(count, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 7, 7, 3), dtype=np.uint8)
    return np.stack([cv2.resize(s, (112, 112), interpolation=cv2.INTER_CUBIC) for s in small])


@pytest.mark.slow
def test_bin_to_images_and_back_is_lossless(tmp_path):
    source = images(8)
    issame = [True, False, False, True]
    write_bin(tmp_path / "lfw.bin", source, issame)
    run_tool("bin2images.py", tmp_path / "lfw.bin", tmp_path / "out")
    pairs, flags = read_pairs(tmp_path / "out" / "pairs.txt")
    assert flags.tolist() == issame
    written = image_files(tmp_path / "out", [relative for pair in pairs for relative in pair], "pairs.txt")
    np.testing.assert_array_equal(written[:], load_bin(tmp_path / "lfw.bin")[0])


@pytest.mark.slow
def test_rec_to_images_to_rec_keeps_payloads_and_labels(tmp_path):
    labels = [0, 0, 1, 2, 2]
    write_record_pack(tmp_path / "pack", zip(images(5, seed=1), labels), num_classes=3)
    run_tool("rec2images.py", tmp_path / "pack", tmp_path / "folder")
    assert sorted(os.listdir(tmp_path / "folder")) == ["0", "1", "2", "list.txt"]
    images2rec("--list", tmp_path / "folder" / "list.txt", tmp_path / "repacked")
    original, repacked = RecordDataset(tmp_path / "pack"), RecordDataset(tmp_path / "repacked")
    assert repacked.header_range == original.header_range == (6, 9)
    for key in range(1, 6):
        assert repacked.read_raw(key) == original.read_raw(key)  # same label, byte-identical JPEG
    images2rec("--folder", tmp_path / "folder", tmp_path / "from_folder")
    assert RecordDataset(tmp_path / "from_folder").labels().tolist() == labels


def test_images2rec_refuses_wrong_size_unless_resizing(tmp_path):
    (tmp_path / "src" / "a").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "src" / "a" / "x.png"), np.zeros((120, 100, 3), np.uint8))
    result = subprocess.run([sys.executable, "tools/data/images2rec.py", "--folder", tmp_path / "src", tmp_path / "p"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and "x.png, whole file: image is 120x100, expected 112x112" in result.stderr
    assert not (tmp_path / "p" / "train.rec").exists()
    images2rec("--folder", tmp_path / "src", "--resize", tmp_path / "p")
    assert RecordDataset(tmp_path / "p")[0][0].shape == (112, 112, 3)
