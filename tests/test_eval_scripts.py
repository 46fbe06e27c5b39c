"""eval_lfw.py, eval_agedb30.py and eval_cfp.py on real files: a .bin of synthetic pairs, the same
pairs as an image folder with either pair-list format, an untrained MobileFaceNet saved in every
checkpoint layout, and features .npz files. Each script runs as a user runs it (a subprocess) at
least once; the other runs call its main (evaluation.verification.cli.verification_main) in this process. Reported
numbers are checked against evaluation.verification called directly on the features the script saved."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from backbone import build_backbone
from dataset import read_bin_payloads, write_bin
from runtime import run_cli
from dataset.synthetic import make_pairs
from evaluation.verification.cli import verification_main
from evaluation.model_loading import load_backbone
from evaluation.verification import evaluate_verification
from runtime.artifacts import backbone_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_PAIRS = 20  # the smallest synthetic set: 10 folds of one matched and one unmatched pair
RESULT_KEYS = ("accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds", "xnorm", "tar_at_far")


def run_script(script, *args, cwd=REPO, ok=True):
    # One thread: the test machines have two shared cores, where a second thread costs more than it gains.
    result = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)],
                            capture_output=True, text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def run_json(script, *args, **kwargs):
    result = run_script(script, *args, "--json", **kwargs)
    return one_json_object(result.stdout)


def one_json_object(stdout):
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


# What each script's main is (eval_lfw.py: run_verification_script("lfw"), ...).
SCRIPTS = {"eval_lfw.py": ("lfw", ()), "eval_agedb30.py": ("agedb_30", ()),
           "eval_cfp.py": ("cfp_fp", ("cfp_fp", "cfp_ff"))}


def run_here(capsys, script, *args):
    """The script's main in this process (the caller asks for `one_thread`, as the subprocesses run):
    its stdout."""
    default_set, set_choices = SCRIPTS[script]
    capsys.readouterr()
    verification_main(default_set, [str(arg) for arg in args], set_choices)
    return capsys.readouterr().out


def json_here(capsys, script, *args):
    return one_json_object(run_here(capsys, script, *args, "--json"))


def assert_same_numbers(reported, expected):
    for key in RESULT_KEYS:
        assert reported[key] == pytest.approx(expected[key], rel=1e-12, abs=0), key


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    images, issame = make_pairs("lfw", N_PAIRS, 0, 12, seed=5, difficulty=0.3)
    write_bin(root / "lfw.bin", images, issame)
    write_bin(root / "small.bin", images[:20], issame[:10])
    torch.manual_seed(0)
    weights = build_backbone("mobilefacenet", 64).state_dict()
    torch.save({"backbone": weights, "head": {"weight": torch.zeros(3, 64)},
                "config": {"backbone": "mobilefacenet", "embedding_size": 64}}, root / "checkpoint.pt")
    torch.save(backbone_file("mobilefacenet", 64, weights), root / "backbone.pt")
    torch.save({f"module.{key}": value for key, value in weights.items()}, root / "plain.pt")
    torch.save(backbone_file("ir18", 64, weights), root / "misnamed.pt")

    # The pairs as image files: byte-identical JPEGs, so every decoded pixel equals the .bin's.
    payloads, _ = read_bin_payloads(root / "lfw.bin")
    lfw_lines = [f"10 {N_PAIRS // 20}"]
    for i, same in enumerate(issame):
        names = [(f"P{i}", 1), (f"P{i}", 2)] if same else [(f"A{i}", 1), (f"B{i}", 1)]
        for side, (name, number) in enumerate(names):
            (root / "lfw_images" / name).mkdir(parents=True, exist_ok=True)
            (root / "lfw_images" / name / f"{name}_{number:04d}.jpg").write_bytes(payloads[2 * i + side])
        lfw_lines.append(f"P{i} 1 2" if same else f"A{i} 1 B{i} 1")
    (root / "lfw_images" / "pairs.txt").write_text("\n".join(lfw_lines) + "\n")
    (root / "flat").mkdir()
    flag_lines = []
    for i, same in enumerate(issame[:10]):
        for side in range(2):
            (root / "flat" / f"{2 * i + side:05d}.jpg").write_bytes(payloads[2 * i + side])
        flag_lines.append(f"{2 * i:05d}.jpg {2 * i + 1:05d}.jpg {1 if same else -1}")
    (root / "flat" / "pairs.txt").write_text("\n".join(flag_lines) + "\n")
    return root


@pytest.fixture(scope="module")
def reference(files):
    """backbone.pt on the .bin without mirror images: the features every other source must match.
    (Run by eval_agedb30.py: every script reads any .bin, naming the set after the file.)"""
    record = run_json("eval_agedb30.py", "--bin", files / "lfw.bin", "--checkpoint", files / "backbone.pt",
                      "--no-flip", "--save-features", files / "reference.npz", "--roc", "")
    with np.load(files / "reference.npz") as saved:
        return record, saved["embeddings"], saved["issame"]


@pytest.mark.slow
def test_bin_with_training_checkpoint_matches_direct_evaluation_and_round_trips(files, reference, capsys, one_thread):
    record = run_json("eval_lfw.py", "--bin", files / "lfw.bin", "--checkpoint", files / "checkpoint.pt",
                      "--save-features", files / "flip.npz", "--roc", files / "roc.png")
    assert record["set"] == "lfw" and record["protocol"] == "insightface" and record["n_pairs"] == N_PAIRS
    assert record["backbone"] == "mobilefacenet" and record["embedding_size"] == 64 and record["flip"] is True
    assert record["checkpoint"] == str(files / "checkpoint.pt")
    assert len(record["fold_accuracies"]) == 10 and all(0 <= a <= 1 for a in record["fold_accuracies"])
    assert set(record["tar_at_far"]) == {"1e-3", "1e-4"}
    assert (files / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with np.load(files / "flip.npz") as saved:
        embeddings, flipped, issame = saved["embeddings"], saved["embeddings_flip"], saved["issame"]
    assert embeddings.shape == flipped.shape == (2 * N_PAIRS, 64) and embeddings.dtype == np.float32
    assert_same_numbers(record, evaluate_verification(embeddings, issame, flipped, "insightface").to_json())
    # checkpoint.pt and backbone.pt hold the same network: the same plain-image features
    np.testing.assert_allclose(embeddings, reference[1], rtol=1e-5, atol=1e-9)

    # --features reproduces the run (here read off the human-readable table) ...
    table = run_here(capsys, "eval_lfw.py", "--features", files / "flip.npz", "--roc", files / "table_roc.png")
    assert_table_shows(table, record, files / "table_roc.png")
    # ... and the seed protocol on it matches its direct call
    seed = json_here(capsys, "eval_lfw.py", "--features", files / "flip.npz", "--protocol", "seed",
                    "--roc", files / "roc_seed.png")
    assert seed["protocol"] == "seed" and seed["threshold_kind"] == "cosine"
    assert_same_numbers(seed, evaluate_verification(embeddings, issame, flipped, "seed").to_json())
    assert os.path.getsize(files / "roc_seed.png") > 1000


def assert_table_shows(out, record, roc_path):
    lines = out.splitlines()
    assert lines[0].startswith(f"lfw: {N_PAIRS} pairs, insightface protocol, 10 folds, mirrored images on")
    assert lines[1].split()[:3] == ["fold", "accuracy", "threshold"]
    for fold in range(10):
        number, accuracy, threshold = lines[2 + fold].split()
        assert int(number) == fold + 1
        assert float(accuracy.rstrip("%")) == pytest.approx(100 * record["fold_accuracies"][fold], abs=0.006)
        assert float(threshold) == pytest.approx(record["thresholds"][fold], abs=6e-5)
    assert f"accuracy: {100 * record['accuracy_mean']:.2f}% ± {100 * record['accuracy_std']:.2f}%" in out
    assert f"XNorm: {record['xnorm']:.4f}" in out
    for far in ("1e-03", "1e-04"):
        assert f"TAR@FAR={far}: {100 * record['tar_at_far'][far.replace('e-0', 'e-')]:.2f}% ± " in out
    assert f"ROC curve: {roc_path}" in out and os.path.getsize(roc_path) > 1000


def test_reference_run_reports_its_own_features(files, reference):
    record, embeddings, issame = reference
    assert record["set"] == "lfw" and record["flip"] is False and record["roc"] is None
    assert_same_numbers(record, evaluate_verification(embeddings, issame, None, "insightface").to_json())


@pytest.mark.slow
def test_image_folder_with_lfw_pairs_txt_and_flag_list(files, reference, capsys, one_thread):
    _, embeddings, _ = reference
    lfw = json_here(capsys, "eval_lfw.py", "--images", files / "lfw_images",
                    "--pairs", files / "lfw_images" / "pairs.txt",
                    "--checkpoint", files / "backbone.pt", "--no-flip", "--roc", "",
                    "--save-features", files / "from_lfw_list.npz")
    with np.load(files / "from_lfw_list.npz") as saved:
        np.testing.assert_allclose(saved["embeddings"], embeddings, rtol=1e-5, atol=1e-9)
        assert saved["issame"].tolist() == reference[2].tolist()
        assert_same_numbers(lfw, evaluate_verification(saved["embeddings"], saved["issame"]).to_json())

    flags = run_json("eval_cfp.py", "--set", "cfp_ff", "--images", files / "flat",
                     "--pairs", files / "flat" / "pairs.txt", "--checkpoint", files / "backbone.pt", "--no-flip",
                     "--roc", "", "--protocol", "seed", "--save-features", files / "from_flag_list.npz")
    assert flags["set"] == "cfp_ff" and flags["pairs"] == str(files / "flat" / "pairs.txt")
    with np.load(files / "from_flag_list.npz") as saved:
        np.testing.assert_allclose(saved["embeddings"], embeddings[:20], rtol=1e-5, atol=1e-9)
        assert saved["issame"].tolist() == reference[2][:10].tolist()
        assert_same_numbers(flags, evaluate_verification(saved["embeddings"], saved["issame"], None, "seed").to_json())


def test_plain_state_dict_needs_and_takes_backbone_and_width(files, reference, capsys, one_thread):
    record = json_here(capsys, "eval_lfw.py", "--bin", files / "small.bin", "--checkpoint", files / "plain.pt",
                      "--backbone", "mobilefacenet", "--embedding-size", "64", "--no-flip", "--roc", "",
                      "--save-features", files / "plain.npz")
    assert record["backbone"] == "mobilefacenet" and record["embedding_size"] == 64 and record["n_pairs"] == 10
    with np.load(files / "plain.npz") as saved:
        np.testing.assert_allclose(saved["embeddings"], reference[1][:20], rtol=1e-5, atol=1e-9)


def test_default_set_names_and_paths(files, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default data/<set>.bin is relative to where a script runs
    features = tmp_path / "features" / "reference.npz"
    features.parent.mkdir()
    features.write_bytes((files / "reference.npz").read_bytes())
    verification_main("agedb_30", ["--features", str(features), "--json"])
    agedb = json.loads(capsys.readouterr().out)
    # without a checkpoint the ROC goes beside the features file
    assert agedb["set"] == "agedb_30" and agedb["roc"] == str(features.parent / "roc_agedb_30_insightface.png")
    assert (features.parent / "roc_agedb_30_insightface.png").is_file()
    verification_main("cfp_fp", ["--set", "cfp_ff", "--features", str(features), "--protocol", "seed",
                                 "--json"], ("cfp_fp", "cfp_ff"))
    assert json.loads(capsys.readouterr().out)["set"] == "cfp_ff"
    assert (features.parent / "roc_cfp_ff_seed.png").is_file()
    assert sorted(os.listdir(tmp_path)) == ["features"]  # nothing written where the script ran
    assert error_of(["--set", "cfp_ff", "--checkpoint", files / "backbone.pt"], capsys, "cfp_fp",
                    ("cfp_fp", "cfp_ff")) == "error: data/cfp_ff.bin: verification file not found"
    assert error_of(["--checkpoint", files / "backbone.pt"], capsys, "agedb_30") == \
        "error: data/agedb_30.bin: verification file not found"


def test_roc_goes_beside_the_checkpoint_and_never_into_the_repository(files, tmp_path, monkeypatch, capsys,
                                                                      one_thread):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "backbone.pt").write_bytes((files / "backbone.pt").read_bytes())
    data = tmp_path / "default_roc_check.bin"  # a set name no other run uses
    data.write_bytes((files / "small.bin").read_bytes())
    in_repository = os.path.join(REPO, "result", "roc_default_roc_check_insightface.png")
    monkeypatch.chdir(REPO)  # where a user runs the scripts
    verification_main("lfw", ["--bin", str(data), "--checkpoint", str(run / "backbone.pt"), "--no-flip", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["roc"] == str(run / "roc_default_roc_check_insightface.png")
    assert (run / "roc_default_roc_check_insightface.png").read_bytes()[:4] == b"\x89PNG"
    assert not os.path.exists(in_repository)


# ---------------------------------------------------------------- errors

def error_of(argv, capsys, default_set="lfw", set_choices=()) -> str:
    """The one-line message of the scripts' main on `argv`, run in this process (as run_cli runs it)."""
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: verification_main(default_set, [str(arg) for arg in argv], set_choices))
    code = stopped.value.code
    message = code if isinstance(code, str) else capsys.readouterr().err.strip().splitlines()[-1]
    assert code != 0
    return message


def test_user_errors_are_one_line_messages_naming_the_file(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that wrongly ran to the end would write its default result/ here
    model = ["--checkpoint", files / "backbone.pt"]
    (tmp_path / "garbage.bin").write_bytes(b"this is not a pickle")
    assert error_of(["--bin", tmp_path / "garbage.bin", *model], capsys).startswith(
        f"error: {tmp_path / 'garbage.bin'}: not a verification .bin pickle")
    assert error_of(["--bin", files / "lfw.bin", "--checkpoint", tmp_path / "nope.pt"], capsys) == \
        f"error: {tmp_path / 'nope.pt'}: checkpoint file not found"
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert error_of(["--bin", files / "lfw.bin", "--checkpoint", tmp_path / "notes.txt"], capsys).startswith(
        f"error: {tmp_path / 'notes.txt'}: not a PyTorch checkpoint")

    # a checkpoint that does not fit: the width, the network (via --backbone) and a plain state_dict alone
    width = error_of(["--bin", files / "lfw.bin", *model, "--embedding-size", "128"], capsys)
    assert width.startswith(f"error: {files / 'backbone.pt'}: does not fit backbone mobilefacenet with "
                            "embedding size 128: shape mismatch (file vs network) linear.weight [64, 512] vs "
                            "[128, 512], bn.weight [64] vs [128]")
    assert width.endswith("(+1 more) (check --backbone and --embedding-size)")
    network = error_of(["--bin", files / "lfw.bin", *model, "--backbone", "ir18"], capsys)
    assert network.startswith(f"error: {files / 'backbone.pt'}: does not fit backbone ir18 with embedding size 64: "
                              "missing keys conv1.weight, bn1.weight, bn1.bias, bn1.running_mean (+183 more); "
                              "unexpected keys conv1.conv.weight")
    assert f"{files / 'misnamed.pt'}: does not fit backbone ir18" in error_of(
        ["--bin", files / "lfw.bin", "--checkpoint", files / "misnamed.pt"], capsys)
    assert "pass --backbone NAME" in error_of(["--bin", files / "lfw.bin", "--checkpoint", files / "plain.pt"],
                                              capsys)

    # features files
    np.savez(tmp_path / "short.npz", embeddings=np.zeros((6, 4), np.float32), issame=np.ones(3, bool))
    np.savez(tmp_path / "rows.npz", embeddings=np.zeros((30, 4), np.float32), issame=np.ones(10, bool))
    np.savez(tmp_path / "keys.npz", features=np.zeros((20, 4), np.float32))
    np.savez(tmp_path / "nan.npz", embeddings=np.full((20, 4), np.nan, np.float32), issame=np.ones(10, bool))
    np.savez(tmp_path / "ints.npz", embeddings=np.zeros((20, 4), np.int32), issame=np.ones(10, bool))
    expected = {
        "short.npz": "only 3 pairs: the 10-fold protocols need at least 10",
        "rows.npz": "embeddings has 30 rows, expected 20",
        "keys.npz": "no array embeddings, issame in the archive (it holds features; needed: embeddings, issame)",
        "nan.npz": "embeddings row 0 holds a NaN or infinite value",
        "ints.npz": "embeddings must be a float [rows, D] array, got dtype int32 shape (20, 4)",
        "garbage.bin": "not a readable .npz archive",
    }
    for name, problem in expected.items():
        assert error_of(["--features", tmp_path / name], capsys).startswith(f"error: {tmp_path / name}: {problem}")

    # image folders
    broken = tmp_path / "pairs.txt"
    broken.write_text("00000.jpg 00001.jpg 1\n00002.jpg missing.jpg -1\n")
    assert error_of(["--images", files / "flat", "--pairs", broken, *model], capsys) == \
        f"error: {files / 'flat' / 'missing.jpg'}: image file listed in {broken} not found (1 of 4 images are missing)"

    # argument combinations: argparse's usage message, exit status 2
    assert error_of(["--features", files / "flip.npz", *model], capsys).endswith(
        "error: --features replaces the model: drop --checkpoint")
    assert error_of(["--images", files / "flat", *model], capsys).endswith(
        "error: --images and --pairs go together: the pair list's paths are relative to the folder")
    assert error_of(["--bin", files / "lfw.bin", "--features", files / "flip.npz"], capsys).endswith(
        "error: give one data source, not --bin and --features")
    assert error_of(["--bin", files / "lfw.bin"], capsys).endswith(
        "error: --checkpoint is required (or give --features)")


@pytest.mark.slow
def test_errors_reach_the_user_without_traceback(files, tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    result = run_script("eval_lfw.py", "--features", tmp_path / "bad.npz", ok=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path / 'bad.npz'}: not a readable .npz archive")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_load_backbone_reads_every_layout_into_the_same_network(files):
    reference_state = torch.load(files / "backbone.pt", weights_only=True)["state_dict"]
    for name, options in (("checkpoint.pt", {}), ("backbone.pt", {}),
                          ("plain.pt", {"backbone": "mobilefacenet", "embedding_size": 64}),
                          ("misnamed.pt", {"backbone": "mobilefacenet"})):
        model, backbone, size = load_backbone(files / name, **options)
        assert (backbone, size, model.training) == ("mobilefacenet", 64, False)
        for key, value in model.state_dict().items():
            assert torch.equal(value, reference_state[key]), (name, key)
