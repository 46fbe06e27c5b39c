"""eval_blufr.py end to end on the synthetic LFW-like folder and BLUFR config of
tools/data/make_synthetic_protocols.py, with an untrained MobileFaceNet: from images (features saved),
then from the saved features, with the same numbers and the three figures; bad input refused in one
line (the script's body run in this process, as `python eval_blufr.py` runs it)."""

import json
import os

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

import eval_blufr
from backbone import build_backbone
from evaluation.blufr import evaluate_blufr, read_blufr_config, write_blufr_config
from runtime.artifacts import backbone_file
from script_runs import run
from script_runs import run_here as run_script_here

SMALL = ["--blufr-identities", "24", "--max-images", "4", "--deepglint-identities", "3", "--images-per-identity", "2",
         "--distractors", "4"]


def run_here(capsys, *args):
    return run_script_here(capsys, eval_blufr.main, *args)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("blufr")
    made = run("tools/data/make_synthetic_protocols.py", root, *SMALL)
    assert made.returncode == 0, made.stderr
    torch.manual_seed(0)
    (root / "run").mkdir()
    torch.save(backbone_file("mobilefacenet", 64, build_backbone("mobilefacenet", 64).state_dict()),
               root / "run" / "backbone.pt")
    return root


@pytest.mark.slow
def test_from_images_then_from_saved_features(data):
    config = data / "blufr_lfw_config.mat"
    first = run("eval_blufr.py", "--config", config, "--images", data / "lfw", "--checkpoint",
                data / "run" / "backbone.pt", "--save-features", data / "features.npy", "--json")
    assert first.returncode == 0, first.stderr
    from_images = json.loads(first.stdout.strip().splitlines()[-1])
    assert first.stdout.splitlines()[0].startswith("BLUFR: 10 trials over")
    assert set(from_images["figures"].values()) == {str(data / "run" / name) for name in
                                                    ("blufr_roc.png", "blufr_open_set_roc.png", "blufr_cmc.png")}
    assert all(os.path.getsize(path) > 1000 for path in from_images["figures"].values())
    assert from_images["backbone"] == "mobilefacenet" and from_images["flip"] is True

    second = run("eval_blufr.py", "--config", config, "--features", data / "features.npy", "--out-dir",
                 data / "figures", "--json")
    assert second.returncode == 0, second.stderr
    from_features = json.loads(second.stdout.strip().splitlines()[-1])
    for key in ("vr", "dir", "vr_trials", "dir_trials", "trial_sizes"):
        assert from_features[key] == from_images[key], key
    assert sorted(os.listdir(data / "figures")) == ["blufr_cmc.png", "blufr_open_set_roc.png", "blufr_roc.png"]
    features = np.load(data / "features.npy")
    assert features.shape == (len(loadmat(config)["imageList"]), 64)
    assert evaluate_blufr(features, read_blufr_config(config)).to_json()["vr_trials"] == from_images["vr_trials"]


def one_line_error(status, out, err, *pieces):
    assert status != 0 and not out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") or "usage:" in err, err
    for piece in pieces:
        assert piece in err, err


def test_bad_input_is_refused_in_one_line(tmp_path, capsys, one_thread):
    n_images = 12
    names = [f"P{i % 4}_{i:04d}.jpg" for i in range(n_images)]
    test = [np.arange(n_images)] * 2
    gallery = [np.arange(4)] * 2
    config = tmp_path / "config.mat"
    write_blufr_config(config, names, np.arange(n_images) % 4, [np.arange(2)] * 2, test, gallery,
                       [np.arange(4, n_images)] * 2)
    np.save(tmp_path / "short.npy", np.ones((n_images - 1, 8), np.float32))
    one_line_error(*run_here(capsys, "--config", config, "--features", tmp_path / "short.npy"),
                   f"features has {n_images - 1} rows, expected {n_images}")
    nan = np.ones((n_images, 8), np.float32)
    nan[5, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    one_line_error(*run_here(capsys, "--config", config, "--features", tmp_path / "nan.npy"),
                   "features row 5 holds a NaN")
    fields = {key: value for key, value in loadmat(config).items() if not key.startswith("__") and key != "probIndex"}
    savemat(tmp_path / "no_probes.mat", fields)
    one_line_error(*run_here(capsys, "--config", tmp_path / "no_probes.mat", "--features", tmp_path / "nan.npy"),
                   "no field probIndex")
    (tmp_path / "P0").mkdir()
    (tmp_path / "backbone.pt").write_bytes(b"")  # the image check comes before the model is read
    one_line_error(*run_here(capsys, "--config", config, "--images", tmp_path, "--checkpoint", tmp_path / "backbone.pt"),
                   "image file listed in", f"({n_images} of {n_images} images are missing)")
    one_line_error(*run_here(capsys, "--config", config, "--features", tmp_path / "nan.npy", "--checkpoint",
                             tmp_path / "backbone.pt"), "--features replaces the model")
    one_line_error(*run_here(capsys, "--config", config, "--features", tmp_path / "nan.npy", "--image-ext", ".png"),
                   "--image-ext renames the image files of --images")
