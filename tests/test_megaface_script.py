"""eval_megaface.py on synthetic FaceScrub-like probes and a few hundred distractors as image folders,
an untrained MobileFaceNet, hand-written noise lists. The whole pipeline and an extraction that fails
run as a user runs them (subprocesses); the other runs call the script's main in this process, as
`python eval_megaface.py` would. Its numbers are checked against evaluation.megaface called directly
on the features it saved; its devkit files are read back; an extraction stopped twice (--max-chunks,
then an unreadable image) resumes without recomputing a finished chunk."""

import json
import os
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import eval_megaface
from backbone import build_backbone
from runtime import run_cli
from dataset.synthetic import SyntheticFaces
from evaluation.megaface import evaluate_megaface
from evaluation.megaface.noise import clean_facescrub_probes
from runtime.artifacts import backbone_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDENTITIES, PER_IDENTITY, DISTRACTORS = 3, 3, 200
NOISY_PROBE = "person1/person1_2.png"
NOISY_DISTRACTORS = ("a0/b0/0000.jpg", "a1/b1/0001.jpg")


def run_megaface(*args, ok=True):
    # One thread: the test machines have two shared cores, where a second thread costs more than it gains.
    result = subprocess.run([sys.executable, os.path.join(REPO, "eval_megaface.py"), *map(str, args)],
                            capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def run_here(capsys, *args):
    """eval_megaface.py's body (run_cli over main) in this process: (exit status, stdout, stderr) as the
    command gives them; Python prints a SystemExit message to stderr and exits with 1. The caller asks
    for `one_thread`, as the subprocesses run."""
    capsys.readouterr()
    status, message = 0, ""
    try:
        run_cli(lambda: eval_megaface.main([str(arg) for arg in args]))
    except SystemExit as stopped:
        if isinstance(stopped.code, str):
            status, message = 1, stopped.code + "\n"
        else:
            status = stopped.code or 0
    captured = capsys.readouterr()
    return status, captured.out, captured.err + message


def write_image(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("megaface")
    faces = SyntheticFaces(seed=2, difficulty=0.2)
    for identity in range(IDENTITIES):
        for index in range(PER_IDENTITY):
            write_image(root / "probes" / f"person{identity}" / f"person{identity}_{index}.png",
                        faces.render(identity, index))
    for i in range(DISTRACTORS):
        write_image(root / "distractors" / f"a{i % 4}" / f"b{i % 3}" / f"{i:04d}.jpg", faces.render(1000 + i, 0))
    torch.manual_seed(0)
    torch.save(backbone_file("mobilefacenet", 64, build_backbone("mobilefacenet", 64).state_dict()),
               root / "backbone.pt")
    (root / "facescrub_noises.txt").write_text(f"# noisy probes\n{NOISY_PROBE.split('/')[-1]}\n")
    (root / "megaface_noises.txt").write_text(f"# noisy distractors\n{NOISY_DISTRACTORS[0]}\n"
                                              f"2\t{NOISY_DISTRACTORS[1]}\n")
    return root


@pytest.fixture(scope="module")
def full_run(data):
    """The whole pipeline once, from image folders: (its JSON record, the features it saved)."""
    result = run_megaface("--checkpoint", data / "backbone.pt", "--probes", data / "probes",
                          "--distractors", data / "distractors", "--no-flip", "--chunk-size", "64",
                          "--feature-dir", data / "features", "--devkit-out", data / "devkit",
                          "--save-features", data / "features.npz", "--out-dir", data / "out",
                          "--facescrub-noises", data / "facescrub_noises.txt",
                          "--megaface-noises", data / "megaface_noises.txt", "--json")
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    with np.load(data / "features.npz") as saved:
        return json.loads(lines[0]), {key: saved[key] for key in saved.files}


def test_numbers_equal_direct_evaluation_raw_and_refined(data, full_run):
    record, saved = full_run
    assert saved["probe_paths"].tolist() == [f"person{i}/person{i}_{k}.png" for i in range(IDENTITIES)
                                             for k in range(PER_IDENTITY)]
    assert saved["probe_labels"].tolist() == np.repeat(np.arange(IDENTITIES), PER_IDENTITY).tolist()
    assert saved["distractor_embeddings"].shape == (DISTRACTORS, 64)
    assert record["distractors"] == DISTRACTORS and record["probes"] == 9 and record["identities"] == 3
    assert [row["distractors"] for row in record["table"]] == [10, 100, DISTRACTORS]
    assert record["noise"] == {"noisy_probes": 1, "noisy_distractors": 2}

    options = dict(distractor_counts=[10, 100, DISTRACTORS], cmc_ranks=10, far_targets=(1e-6,), seed=0)
    raw = evaluate_megaface(saved["probe_embeddings"], saved["probe_labels"], saved["distractor_embeddings"], **options)
    noisy_probe = saved["probe_paths"] == NOISY_PROBE
    excluded = np.isin(saved["distractor_paths"], NOISY_DISTRACTORS)
    assert noisy_probe.sum() == 1 and excluded.sum() == 2
    cleaned = clean_facescrub_probes(saved["probe_embeddings"], saved["probe_labels"], noisy_probe, seed=0)
    refined = evaluate_megaface(cleaned, saved["probe_labels"], saved["distractor_embeddings"],
                                excluded_distractors=excluded, **options)
    for row in record["table"]:
        n = row["distractors"]
        assert row["rank1"] == raw.rank1[n] and row["tar_at_far_1e-6"] == raw.tar_at_far[n][1e-6]
        assert row["rank1_refined"] == refined.rank1[n]
        assert row["tar_at_far_1e-6_refined"] == refined.tar_at_far[n][1e-6]
    assert record["rank1"] == raw.rank1[DISTRACTORS] and record["tar_at_far_1e-6"] == raw.tar_at_far[DISTRACTORS][1e-6]
    assert record["raw"] == raw.to_json() and record["refined"] == refined.to_json()
    # the synthetic task is not trivial for an untrained network: the numbers move with the distractors
    assert raw.rank1[10] > raw.rank1[DISTRACTORS]

    with open(data / "out" / "megaface.json") as handle:
        stored = json.load(handle)
    assert stored["refined"]["cmc"] == record["refined"]["cmc"]
    assert stored["raw"]["roc"][str(DISTRACTORS)]["fpr"][0] == 1.0  # the lowest threshold accepts every impostor
    for name in ("cmc.png", "roc.png", "roc_refined.png"):
        assert (data / "out" / name).read_bytes()[:4] == b"\x89PNG"


def test_feature_store_holds_the_saved_features_and_paths(data, full_run):
    _, saved = full_run
    np.testing.assert_array_equal(np.load(data / "features" / "distractors.npy"), saved["distractor_embeddings"])
    np.testing.assert_array_equal(np.load(data / "features" / "probes.npy"), saved["probe_embeddings"])
    assert (data / "features" / "distractors_paths.txt").read_text().splitlines() == saved["distractor_paths"].tolist()
    progress = json.loads((data / "features" / "distractors_progress.json").read_text())
    assert progress["done"] == [0, 1, 2, 3] and progress["complete"] is True
    np.testing.assert_allclose(np.linalg.norm(saved["distractor_embeddings"], axis=1), 1.0, rtol=1e-5)


def test_devkit_files_mirror_the_image_trees(data, full_run):
    _, saved = full_run
    for sub, paths, features in (("facescrub", saved["probe_paths"], saved["probe_embeddings"]),
                                 ("megaface", saved["distractor_paths"], saved["distractor_embeddings"])):
        for relative, feature in zip(paths, features):
            content = (data / "devkit" / sub / f"{relative}_mobilefacenet.bin").read_bytes()
            assert struct.unpack("<4i", content[:16]) == (64, 1, 4, 5) and len(content) == 16 + 4 * 64
            np.testing.assert_array_equal(np.frombuffer(content[16:], "<f4"), feature)
    written = {os.path.relpath(os.path.join(folder, name), data / "devkit")
               for folder, _, names in os.walk(data / "devkit") for name in names}
    assert len(written) == len(saved["probe_paths"]) + DISTRACTORS
    # nothing lands beside the images
    for folder in ("probes", "distractors"):
        assert not [name for _, _, names in os.walk(data / folder) for name in names if name.endswith(".bin")]


def test_features_file_gives_the_same_table(data, full_run, capsys, one_thread):
    record, _ = full_run
    status, out, _ = run_here(capsys, "--features", data / "features.npz", "--out-dir", data / "out_features",
                              "--facescrub-noises", data / "facescrub_noises.txt",
                              "--megaface-noises", data / "megaface_noises.txt")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == (f"MegaFace Challenge 1: 9 FaceScrub probes of 3 identities, {DISTRACTORS} distractors; "
                        f"features {data / 'features.npz'}")
    assert lines[1].split() == ["distractors", "rank-1", "TAR@FAR=1e-6", "rank-1", "@R", "TAR@FAR=1e-6", "@R"]
    for line, row in zip(lines[2:5], record["table"]):
        count, *percentages = line.split()
        assert int(count.replace(",", "")) == row["distractors"]
        expected = [row["rank1"], row["tar_at_far_1e-6"], row["rank1_refined"], row["tar_at_far_1e-6_refined"]]
        assert [float(p.rstrip("%")) for p in percentages] == pytest.approx([100 * v for v in expected], abs=5e-4)
    assert lines[5] == "noise lists: 1 probes replaced, 2 distractors neutralised"


def test_results_go_beside_the_features_file_or_the_checkpoint(data, full_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # where the script runs gets nothing
    features = tmp_path / "elsewhere" / "features.npz"
    features.parent.mkdir()
    features.write_bytes((data / "features.npz").read_bytes())
    eval_megaface.main(["--features", str(features), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["files"]["json"] == str(features.parent / "megaface" / "megaface.json")
    assert sorted(os.listdir(features.parent / "megaface")) == ["cmc.png", "megaface.json", "roc.png"]
    # from images, beside the checkpoint (the full run's store is complete: nothing is extracted again)
    eval_megaface.main(["--checkpoint", str(data / "backbone.pt"), "--probes", str(data / "probes"),
                        "--distractors", str(data / "distractors"), "--no-flip", "--chunk-size", "64",
                        "--feature-dir", str(data / "features"), "--json"])
    captured = capsys.readouterr()
    assert json.loads(captured.out)["files"]["json"] == str(data / "megaface" / "megaface.json")
    assert (data / "megaface" / "cmc.png").is_file() and "distractors: 0 chunks computed, 4 reused" in captured.err
    assert os.listdir(tmp_path) == ["elsewhere"]


@pytest.mark.slow
def test_interrupted_extraction_resumes_without_recomputing(data, full_run, tmp_path, capsys, one_thread):
    _, saved = full_run
    # the devkit's JSON lists, here over a 24-image part of the distractors
    probe_list = {"path": saved["probe_paths"].tolist(),
                  "id": [path.split("/")[0] for path in saved["probe_paths"].tolist()]}
    (tmp_path / "facescrub_features_list.json").write_text(json.dumps(probe_list))
    subset = saved["distractor_paths"][5:29].tolist()
    (tmp_path / "megaface_features_list.json_24_1").write_text(json.dumps({"path": subset}))
    store = tmp_path / "store"
    command = ["--checkpoint", data / "backbone.pt", "--probes", data / "probes",
               "--probe-list", tmp_path / "facescrub_features_list.json", "--distractors", data / "distractors",
               "--distractor-list", tmp_path / "megaface_features_list.json_24_1", "--no-flip",
               "--chunk-size", "8", "--feature-dir", store, "--out-dir", tmp_path / "out", "--json"]

    def progress(kind):
        return json.loads((store / f"{kind}_progress.json").read_text())["done"]

    first_status, first_stdout, first_stderr = run_here(capsys, *command, "--max-chunks", "1")
    assert first_status == 1 and first_stdout == ""
    assert "probes: chunk 1/2 (images 0-7) computed" in first_stderr
    assert first_stderr.strip().endswith("stopped after 1 chunks (--max-chunks); run the same command to resume")
    assert progress("probes") == [0] and progress("distractors") == []

    unreadable = data / "distractors" / subset[12]  # in the second chunk of distractors
    original = unreadable.read_bytes()
    unreadable.write_bytes(b"not an image")
    try:
        second = run_megaface(*command, ok=False)
    finally:
        unreadable.write_bytes(original)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {unreadable}, whole file: payload of 12 bytes")
    assert "probes: chunk 2/2 (images 8-8) computed" in second.stderr
    assert "distractors: chunk 1/3 (images 0-7) computed" in second.stderr
    assert progress("probes") == [0, 1] and progress("distractors") == [0]

    # Mark every finished row: a rerun that recomputed any of them would overwrite the mark.
    for kind in ("probes", "distractors"):
        features = np.lib.format.open_memmap(store / f"{kind}.npy", mode="r+")
        features[:8] = 0.125
        features.flush()
        del features
    third_status, third_stdout, third_stderr = run_here(capsys, *command)
    assert third_status == 0, third_stderr
    assert "probes: 0 chunks computed, 2 reused, 0 left" in third_stderr
    assert "distractors: 2 chunks computed, 1 reused, 0 left" in third_stderr
    assert progress("distractors") == [0, 1, 2]
    probes, distractors = np.load(store / "probes.npy"), np.load(store / "distractors.npy")
    assert (probes[:8] == 0.125).all() and (distractors[:8] == 0.125).all()
    # the rows computed in other runs, chunks and batches are the features of the full run
    np.testing.assert_allclose(probes[8:], saved["probe_embeddings"][8:], atol=1e-5)
    np.testing.assert_allclose(distractors[8:], saved["distractor_embeddings"][5:29][8:], atol=1e-5)
    record = json.loads(third_stdout)
    assert record["distractors"] == 24 and [row["distractors"] for row in record["table"]] == [10, 24]


# ---------------------------------------------------------------- errors

def error_of(argv) -> str:
    """The message a user sees, and a non-zero exit, from the script's main run in this process."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: eval_megaface.main([str(arg) for arg in argv]))
    assert stopped.value.code != 0
    return stopped.value.code


def test_user_errors_name_the_file(data, full_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that wrongly ran to the end would write its default result/ here
    model = ["--checkpoint", data / "backbone.pt"]
    images = ["--probes", data / "probes", "--distractors", data / "distractors"]

    def usage_error(argv):
        assert error_of(argv) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert usage_error([*model, *images, "--devkit-out", data / "distractors" / "a0"]).endswith(
        f"error: --devkit-out {data / 'distractors' / 'a0'}: its facescrub/ tree would overlap the image folder "
        f"{data / 'distractors'}; choose a folder outside the images")
    # DIR/megaface would be the distractor folder itself (reached through a link here)
    (tmp_path / "megaface").symlink_to(data / "distractors")
    assert usage_error([*model, "--probes", data / "probes", "--distractors", tmp_path / "megaface",
                        "--devkit-out", tmp_path]).endswith(
        f"error: --devkit-out {tmp_path}: its megaface/ tree would overlap the image folder {data / 'distractors'}; "
        "choose a folder outside the images")
    assert usage_error(["--features", data / "features.npz", *model]).endswith(
        "error: --features replaces the model: drop --checkpoint")
    assert usage_error(["--probes", data / "probes", *model]).endswith(
        "error: give --probes and --distractors (image folders), or --features, one of the two")
    assert usage_error(["--features", data / "features.npz", "--sizes", "10,1000"]).endswith(
        f"error: --sizes asks for 1000 distractors; only {DISTRACTORS} are given")

    # a feature store made under other settings is refused, not mixed in
    assert error_of([*model, *images, "--no-flip", "--chunk-size", "64", "--feature-dir", data / "features",
                     "--precision", "bf16"]) == (
        f"error: {data / 'features' / 'probes_progress.json'}: holds probes features of another run "
        "(precision was 'fp32', now 'bf16'): pass another --feature-dir or delete this one")

    _, saved = full_run
    np.savez(tmp_path / "no_paths.npz", probe_embeddings=saved["probe_embeddings"],
             probe_labels=saved["probe_labels"], distractor_embeddings=saved["distractor_embeddings"])
    assert usage_error(["--features", tmp_path / "no_paths.npz", "--megaface-noises",
                        data / "megaface_noises.txt"]).endswith(
        f"{tmp_path / 'no_paths.npz'} holds no probe_paths/distractor_paths: the noise lists and --devkit-out "
        "need image paths")
    np.savez(tmp_path / "labels.npz", probe_embeddings=saved["probe_embeddings"], probe_labels=np.zeros(3, int),
             distractor_embeddings=saved["distractor_embeddings"])
    assert error_of(["--features", tmp_path / "labels.npz"]) == (
        f"error: {tmp_path / 'labels.npz'}: probe_labels must be 9 integers, got dtype int64 shape (3,)")
    np.savez(tmp_path / "singles.npz", probe_embeddings=saved["probe_embeddings"], probe_labels=np.arange(9),
             distractor_embeddings=saved["distractor_embeddings"])
    assert error_of(["--features", tmp_path / "singles.npz"]) == (
        f"error: {tmp_path / 'singles.npz'}: no identity has two probe images: there is no genuine pair")
    np.savez(tmp_path / "missing.npz", probe_embeddings=saved["probe_embeddings"])
    assert error_of(["--features", tmp_path / "missing.npz"]).startswith(
        f"error: {tmp_path / 'missing.npz'}: no array probe_labels, distractor_embeddings in the archive")

    (tmp_path / "list.json").write_text('{"paths": []}')
    assert error_of([*model, *images, "--probe-list", tmp_path / "list.json"]) == (
        f"error: {tmp_path / 'list.json'}: expected the devkit layout "
        '{"path": ["relative/image.jpg", ...], ...}')
    (tmp_path / "list.json").write_text('{"path": ["person0/absent.png"]}')
    assert error_of([*model, *images, "--probe-list", tmp_path / "list.json"]) == (
        f"error: {data / 'probes' / 'person0' / 'absent.png'}: image file listed in {tmp_path / 'list.json'} "
        "not found (1 of 1 images are missing)")
    assert error_of(["--features", data / "features.npz", "--out-dir", tmp_path, "--facescrub-noises",
                     tmp_path / "absent.txt"]) == f"error: {tmp_path / 'absent.txt'}: noise list not found"
