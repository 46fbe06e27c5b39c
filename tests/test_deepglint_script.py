"""tools/model/deepglint_features.py and eval_deepglint.py end to end on the synthetic DeepGlint-like folder
of tools/data/make_synthetic_protocols.py, with an untrained MobileFaceNet: an extraction stopped by
--max-chunks resumes, the binary holds the features of the images in the old script's order, and the
evaluation of it equals evaluate_deepglint's; bad input is refused in one line; the real-size
benchmark tool runs at a tiny size."""

import json
import os

import numpy as np
import pytest
import torch

import eval_deepglint
from backbone import build_backbone
from dataset import image_files
from evaluation.deepglint import evaluate_deepglint, list_images, read_feature_bin, read_labels, write_feature_bin
from evaluation.feature_store import Embedder
from evaluation.model_loading import load_backbone
from runtime.artifacts import backbone_file
from script_runs import run
from script_runs import run_here as run_script_here

SMALL = ["--blufr-identities", "12", "--max-images", "3", "--deepglint-identities", "3", "--images-per-identity", "3",
         "--distractors", "9"]


def run_here(capsys, *args):
    return run_script_here(capsys, eval_deepglint.main, *args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepglint")
    made = run("tools/data/make_synthetic_protocols.py", root, *SMALL)
    assert made.returncode == 0, made.stderr
    torch.manual_seed(0)
    torch.save(backbone_file("mobilefacenet", 64, build_backbone("mobilefacenet", 64).state_dict()),
               root / "backbone.pt")
    return root


@pytest.mark.slow
def test_extraction_resumes_and_the_binary_is_evaluated(data, one_thread):
    out = data / "out" / "deepglint_test_feature.bin"
    tool = ("tools/model/deepglint_features.py", "--checkpoint", data / "backbone.pt", data / "deepglint", out,
            "--chunk-size", "8", "--no-flip")
    stopped = run(*tool, "--max-chunks", "1")
    assert stopped.returncode == 1 and "stopped after 1 chunks (--max-chunks)" in stopped.stderr
    assert not out.exists() and (data / "out" / "deepglint_test_feature.bin.store" / "deepglint.npy").exists()
    finished = run(*tool)
    assert finished.returncode == 0, finished.stderr
    assert "2 chunks computed, 1 reused" in finished.stderr  # 18 images in chunks of 8: the first was kept
    assert sorted(os.listdir(data / "out")) == ["deepglint_test_feature.bin", "deepglint_test_feature_paths.txt"]

    paths = list_images(data / "deepglint")
    assert (data / "out" / "deepglint_test_feature_paths.txt").read_text().splitlines() == paths
    features = read_feature_bin(out)
    model = load_backbone(data / "backbone.pt", None, None, torch.device("cpu"))[0]
    expected = Embedder(model, 64, "cpu", flip=False)(image_files(data / "deepglint", paths, "test"))["features"]
    np.testing.assert_allclose(features, expected, rtol=0, atol=1e-5)

    evaluated = run("eval_deepglint.py", "--features", out, "--labels", data / "deepglint_labels.txt", "--fpr",
                    "0.01", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    record = json.loads(evaluated.stdout.strip().splitlines()[-1])
    direct = evaluate_deepglint(features, read_labels(data / "deepglint_labels.txt"), "0.01").to_json()
    assert {key: record[key] for key in direct} == direct
    assert (record["n_probes"], record["n_identities"], record["n_distractors"]) == (9, 3, 9)
    assert record["n_negative_pairs"] == 36 - 9 + 81 and record["false_accepts"] == 1


def one_line_error(status, out, err, *pieces):
    assert status != 0 and not out
    assert len(err.strip().splitlines()) == 1 or "usage:" in err, err
    for piece in pieces:
        assert piece in err, err


def test_bad_input_is_refused_in_one_line(tmp_path, capsys, one_thread):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((12, 8)).astype(np.float32)
    write_feature_bin(tmp_path / "f.bin", [features], 12, 8)
    (tmp_path / "labels.txt").write_text("\n".join(["0", "0", "1", "1"] + ["-1"] * 8) + "\n")
    (tmp_path / "short.txt").write_text("0\n0\n-1\n")
    (tmp_path / "single.txt").write_text("\n".join(["0", "1", "2", "3"] + ["-1"] * 8) + "\n")
    features[7, 1] = np.inf
    write_feature_bin(tmp_path / "inf.bin", [features], 12, 8)
    (tmp_path / "header.bin").write_bytes((tmp_path / "f.bin").read_bytes()[:-4])
    status, out, _ = run_here(capsys, "--features", tmp_path / "f.bin", "--labels", tmp_path / "labels.txt", "--json")
    assert status == 0 and json.loads(out.splitlines()[-1])["n_positive_pairs"] == 2
    one_line_error(*run_here(capsys, "--features", tmp_path / "f.bin", "--labels", tmp_path / "short.txt"),
                   "3 labels for the 12 rows")
    one_line_error(*run_here(capsys, "--features", tmp_path / "inf.bin", "--labels", tmp_path / "labels.txt"),
                   "feature row 7 holds a NaN or infinite value")
    one_line_error(*run_here(capsys, "--features", tmp_path / "header.bin", "--labels", tmp_path / "labels.txt"),
                   "(truncated)")
    one_line_error(*run_here(capsys, "--features", tmp_path / "f.bin", "--labels", tmp_path / "single.txt"),
                   "no identity has two probe images")
    one_line_error(*run_here(capsys, "--features", tmp_path / "f.bin", "--labels", tmp_path / "labels.txt",
                             "--fpr", "2"), "must lie in [0, 1]")


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size(tmp_path):
    finished = run("tools/bench/benchmark_deepglint.py", "--out", tmp_path, "--rows", "500", "--probes", "60",
                   "--identities", "12", "--dim", "16", "--fpr", "1e-3", "--json")
    assert finished.returncode == 0, finished.stderr
    record = json.loads(finished.stdout.strip().splitlines()[-1])
    assert record["seconds"] > 0 and record["peak_rss_gb"] > 0 and record["distractors"] == 440
    assert record["pairs"] == 60 * 59 // 2 + 60 * 440 and record["result"]["n_identities"] == 12
    labels = read_labels(tmp_path / "labels.txt", 500)
    tpr = evaluate_deepglint(read_feature_bin(tmp_path / "features.bin"), labels, "1e-3").tpr
    assert record["result"]["tpr"] == tpr
