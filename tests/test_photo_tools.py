"""tools/data/align_faces.py and tools/model/compare_faces.py on a folder of real photos: matplotlib's
grace_hopper.jpg, its mirror, a rotated and scaled composite, a canvas with three faces, a blank
image and a file that is no image. The crops go on into tools/data/images2rec.py and the training set
readers; compare_faces runs with an untrained MobileFaceNet in the eval scripts' checkpoint format,
its numbers checked against the evaluation functions called directly."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from backbone import build_backbone
from dataset import align_face, open_training_set, write_bin
from dataset.detect import detect_faces, largest_face
from dataset.image_codec import read_image_file
from dataset.synthetic import make_pairs
from evaluation.features import extract_embeddings
from evaluation.model_loading import load_backbone
from runtime.artifacts import backbone_file
from evaluation.verification import evaluate_verification
from runtime import DataFormatError, UsageError, UserError, l2_normalize, run_cli
from tools.data.align_faces import DONE_FILE, REPORT_FILE, main as align_main
from tools.model.compare_faces import main as compare_main
from tools.data.images2rec import main as images2rec_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
PHOTOS = ["crowd/group.jpg", "grace/1.jpg", "grace/2.png", "grace/3.jpg", "nobody/blank.jpg", "nobody/broken.jpg"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores on the test machines
    yield
    torch.set_num_threads(threads)


def run_tool(script, *args, ok=True):
    """tools/<group>/<name>.py, as a user runs it, from the repository root."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    photo = cv2.cvtColor(cv2.imread(PHOTO), cv2.COLOR_BGR2RGB)
    (root / "grace").mkdir()
    shutil.copy(PHOTO, root / "grace" / "1.jpg")
    save(root / "grace" / "2.png", np.ascontiguousarray(photo[:, ::-1]))
    turned = cv2.getRotationMatrix2D((256.0, 300.0), 15, 0.5)
    save(root / "grace" / "3.jpg", cv2.warpAffine(photo, turned, (480, 520), flags=cv2.INTER_AREA))
    crowd = np.full((500, 900, 3), 60, dtype=np.uint8)
    for angle, scale, x, y in [(0, 0.5, 0, 0), (15, 0.35, 350, 150), (-10, 0.7, 520, 40)]:
        matrix = cv2.getRotationMatrix2D((0, 0), angle, scale) + [[0, 0, x], [0, 0, y]]
        cv2.warpAffine(photo, matrix, (900, 500), dst=crowd, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_TRANSPARENT)
    save(root / "crowd" / "group.jpg", crowd)
    save(root / "nobody" / "blank.jpg", np.full((240, 320, 3), 128, dtype=np.uint8))
    (root / "nobody" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not a photo\n")
    return root


@pytest.fixture(scope="module")
def aligned(source, tmp_path_factory):
    """The tool run as a user runs it: two worker processes and a progress bar."""
    out = tmp_path_factory.mktemp("aligned") / "out"
    result = run_tool("data/align_faces.py", source, out, "--workers", 2, "--device", "cpu")
    return out, result


def done_records(out):
    with open(out / DONE_FILE, encoding="utf-8") as handle:
        return {record["photo"]: record for record in map(json.loads, handle)}


@pytest.mark.slow
def test_align_faces_writes_crops_that_images2rec_and_training_read(aligned, source, tmp_path, capsys):
    out, result = aligned
    assert "6 photos: 4 aligned (4 faces)" in result.stderr
    assert "1 with no face, 1 unreadable, 1 other files skipped" in result.stderr
    assert "aligning" in result.stderr  # the progress bar
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert crops == ["crowd/group.jpg", "grace/1.jpg", "grace/2.jpg", "grace/3.jpg"]
    # The largest face of the crowd, aligned as align_face aligns it (up to the JPEG round trip).
    crowd = read_image_file(source / "crowd" / "group.jpg")
    boxes, _, landmarks = detect_faces(crowd, device="cpu")
    expected = align_face(crowd, landmarks[largest_face(boxes)]).astype(float)
    assert np.abs(read_image_file(out / "crowd" / "group.jpg").astype(float) - expected).mean() < 3

    report = (out / REPORT_FILE).read_text()
    assert "nobody/blank.jpg\tno face found" in report
    assert "nobody/broken.jpg\t" in report and "not a decodable image" in report
    assert "notes.txt" in report

    pack = tmp_path / "pack"
    images2rec_main(["--folder", str(out), str(pack)])
    assert "4 images of 2 identities" in capsys.readouterr().out
    training_set = open_training_set(out)  # train.py's train_data = the folder
    assert len(training_set) == 4
    image, label = training_set[0]
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8


@pytest.mark.slow
def test_align_faces_continues_after_a_kill(aligned, source, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(aligned[0], out)
    before = done_records(out)
    # A kill: the last record half written, one crop gone (renamed away before its record), a crop half written.
    lines = (out / DONE_FILE).read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["photo"] == "grace/3.jpg")
    kept = [line for i, line in enumerate(lines) if i != cut]
    (out / DONE_FILE).write_text("\n".join(kept) + "\n" + lines[cut][:25])
    (out / "grace" / "1.jpg").unlink()
    (out / "grace" / "1.jpg.partial").write_bytes(b"\xff\xd8 half a crop")

    align_main([str(source), str(out), "--workers", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert "4 photos done in an earlier run; 2 to do" in err
    assert not list(out.rglob("*.partial"))
    after = done_records(out)
    assert set(after) == set(before) == set(PHOTOS)
    assert all(after[p]["status"] == before[p]["status"] for p in PHOTOS)
    assert (out / "grace" / "1.jpg").is_file()
    assert len((out / DONE_FILE).read_text().splitlines()) == len(PHOTOS)

    align_main([str(source), str(out), "--workers", "1", "--device", "cpu"])
    assert "6 photos done in an earlier run; 0 to do" in capsys.readouterr().err
    with pytest.raises(UsageError, match="other options.*all_faces False -> True"):
        align_main([str(source), str(out), "--all-faces", "--device", "cpu"])


@pytest.mark.slow
def test_align_faces_all_faces_and_minimum_size(source, tmp_path):
    out = tmp_path / "all"
    align_main([str(source), str(out), "--all-faces", "--format", "png", "--workers", "1", "--device", "cpu"])
    records = done_records(out)
    assert records["crowd/group.jpg"]["crops"] == ["crowd/group_0.png", "crowd/group_1.png", "crowd/group_2.png"]
    crowd = read_image_file(source / "crowd" / "group.jpg")
    _, scores, landmarks = detect_faces(crowd, device="cpu")
    for k in range(3):  # k in score order, written losslessly
        written = read_image_file(out / "crowd" / f"group_{k}.png")
        np.testing.assert_array_equal(written, align_face(crowd, landmarks[k]))
    assert records["crowd/group.jpg"]["scores"] == pytest.approx(scores.tolist(), abs=1e-6)

    big = tmp_path / "big"
    align_main([str(source), str(big), "--all-faces", "--min-size", "135", "--workers", "1", "--device", "cpu"])
    records = done_records(big)
    assert len(records["crowd/group.jpg"]["crops"]) == 1  # the face drawn 0.7 times as large
    assert records["grace/3.jpg"]["status"] == "no_face"  # 0.5 times: under 135 px


def test_align_faces_errors_name_the_folder(tmp_path):
    with pytest.raises(DataFormatError, match="photo folder not found"):
        align_main([str(tmp_path / "missing"), str(tmp_path / "out")])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataFormatError, match="no images"):
        align_main([str(tmp_path / "empty"), str(tmp_path / "out")])


# ============ compare_faces ============

@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    torch.save(backbone_file("mobilefacenet", 64, build_backbone("mobilefacenet", 64).state_dict()),
               root / "backbone.pt")
    images, issame = make_pairs("lfw", 20, 0, 12, seed=5, difficulty=0.3)
    write_bin(root / "lfw.bin", images, issame)
    return root / "backbone.pt", root / "lfw.bin"


def unit_features(checkpoint, paths):
    model = load_backbone(checkpoint)[0]
    crops = []
    for path in paths:
        image = read_image_file(path)
        boxes, _, landmarks = detect_faces(image, device="cpu")
        crops.append(align_face(image, landmarks[largest_face(boxes)]))
    embeddings, mirrored = extract_embeddings(model, np.stack(crops), flip=True, progress=False)
    return l2_normalize(embeddings.astype(np.float64) + mirrored)


@pytest.mark.slow
def test_compare_faces_end_to_end_with_the_protocols_threshold(model_files, source):
    checkpoint, bin_path = model_files
    a, b = source / "grace" / "1.jpg", source / "grace" / "2.png"
    result = run_tool("model/compare_faces.py", a, b, "--checkpoint", checkpoint, "--threshold-from", bin_path,
                      "--device", "cpu", "--json")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])

    model = load_backbone(checkpoint)[0]
    from dataset import load_bin
    images, issame = load_bin(bin_path)
    embeddings, mirrored = extract_embeddings(model, images, flip=True, progress=False)
    protocol = evaluate_verification(embeddings, issame, mirrored, protocol="insightface")
    assert report["threshold"] == pytest.approx(1 - np.mean(protocol.thresholds) / 2, abs=1e-12)
    assert str(bin_path) in report["threshold_source"] and "1 - d/2" in report["threshold_source"]

    features = unit_features(checkpoint, [a, b])
    (pair,) = report["pairs"]
    assert pair["cosine"] == pytest.approx(float(features[0] @ features[1]), abs=1e-5)
    assert pair["same"] == (pair["cosine"] > report["threshold"])
    assert pair["face_a"]["faces"] == pair["face_b"]["faces"] == 1
    assert pair["cosine"] > 0.9  # the photo and its mirror: the mirrored-sum feature barely changes


@pytest.mark.slow
def test_compare_faces_verdict_follows_the_given_threshold(model_files, source, capsys):
    checkpoint = str(model_files[0])
    photos = [str(source / "grace" / "1.jpg"), str(source / "grace" / "3.jpg")]
    compare_main([*photos, "--checkpoint", checkpoint, "--threshold", "0.5", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "threshold: cosine 0.5000 (given with --threshold)" in out
    cosine = float(out.split("cosine ")[-1].split(":")[0])
    assert out.strip().endswith("same person") == (cosine > 0.5)
    compare_main([*photos, "--checkpoint", checkpoint, "--threshold", str(min(cosine + 0.01, 1.0)), "--device", "cpu"])
    assert capsys.readouterr().out.strip().endswith("different people")


@pytest.mark.slow
def test_compare_faces_says_when_a_photo_has_no_face_or_several(model_files, source, capsys):
    checkpoint = str(model_files[0])
    grace, crowd, blank = (str(source / p) for p in ("grace/1.jpg", "crowd/group.jpg", "nobody/blank.jpg"))
    compare_main([crowd, grace, "--checkpoint", checkpoint, "--threshold", "0.3", "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert "group.jpg: 3 faces found; using the largest" in captured.err
    largest = json.loads(captured.out)["pairs"][0]["face_a"]
    assert largest["faces"] == 3
    compare_main([crowd, grace, "--checkpoint", checkpoint, "--threshold", "0.3", "--face", "1,largest",
                  "--device", "cpu", "--json"])
    chosen = json.loads(capsys.readouterr().out)["pairs"][0]["face_a"]
    assert chosen["face"] == 1 and chosen["box"] != largest["box"]
    with pytest.raises(DataFormatError, match=r"--face 5, but 3 faces found \(valid: largest, 0\.\.2\)"):
        compare_main([crowd, grace, "--checkpoint", checkpoint, "--threshold", "0.3", "--face", "5", "--device", "cpu"])

    # What the command prints: one line, no traceback.
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: compare_main([grace, blank, "--checkpoint", checkpoint, "--threshold", "0.3"]))
    message = str(stopped.value.code)
    assert message.startswith(f"error: {blank}: no face found") and "\n" not in message


def test_compare_faces_pairs_list_reports_every_pair(model_files, source, tmp_path, capsys):
    checkpoint = str(model_files[0])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("grace/1.jpg grace/2.png 1\n# a comment\ngrace/1.jpg nobody/blank.jpg 0\n"
                     "grace/3.jpg grace/2.png\n")
    with pytest.raises(UserError, match="1 of 3 pairs could not be compared"):
        compare_main(["--pairs", str(pairs), "--root", str(source), "--checkpoint", checkpoint, "--threshold", "0.3",
                      "--device", "cpu"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5  # the threshold, three pairs, the agreement count
    assert "(listed as same)" in lines[1] and "no face found" in lines[2]
    assert lines[-1] == "1 of 1 labelled pairs agree with their flag"  # the photo and its mirror: same
    bad = tmp_path / "bad.txt"
    bad.write_text("only-one-path\n")
    with pytest.raises(DataFormatError, match=r"bad\.txt, line 1: expected 'left right'"):
        compare_main(["--pairs", str(bad), "--checkpoint", checkpoint, "--threshold", "0.3", "--device", "cpu"])
