"""eval_ijb.py end to end on a synthetic IJB-C tree with real loose crops (rendered faces placed in
larger images, with their 5 landmarks): an untrained MobileFaceNet checkpoint, an extraction
interrupted by --max-chunks and resumed, the features it saved, missing images, bad inputs. Every
reported number is compared with the reference code (tests/ijb_reference.py) run on the features
the command saved."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import ijb_reference as reference
from backbone import build_backbone
from dataset.synthetic_ijb import write_synthetic_ijb
from evaluation.ijb.cli import main
from runtime.artifacts import backbone_file
from runtime import run_cli, save_npz

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_KEYS = {"tar_at_far", "rank1", "rank5", "rank10", "tpir_at_fpir", "mode", "images", "templates", "pairs",
             "skipped_images", "emptied_templates"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("ijb_script")
    plan = write_synthetic_ijb(base / "IJBC", "ijbc", subjects=4, probes_per_subject=1, unenrolled_subjects=1,
                               seed=2, difficulty=0.3)
    torch.manual_seed(0)
    torch.save(backbone_file("mobilefacenet", 64, build_backbone("mobilefacenet", 64).state_dict()),
               base / "backbone.pt")
    return base, plan


def run(argv):
    """(exit status, stdout, stderr) of the command run in this process, as eval_ijb.py runs it."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(lambda: main([str(item) for item in argv]))
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr)
    return status, out.getvalue(), err.getvalue()


def expected_record(root, embeddings, flipped, mode="N1D1F2", valid=None):
    """The JSON numbers of eval_ijbc.py (1:1) and ijb_evals.py (1:N) on these features. With `valid`,
    the images it leaves out are gone from the image rows, and a template left with none of its
    images is gone from the pair list and the 1:N lists (their rows filtered before the references
    read them): what eval_ijb.py --skip-missing promises to compute."""
    meta = os.path.join(root, "meta")
    templates, medias = reference.read_template_media_list(os.path.join(meta, "ijbc_face_tid_mid.txt"))
    p1, p2, label = reference.read_template_pair_list(os.path.join(meta, "ijbc_template_pair_label.txt"))
    _, faceness = reference.read_landmarks_and_faceness(os.path.join(meta, "ijbc_name_5pts_score.txt"))
    galleries = [reference.read_1n_csv(os.path.join(meta, f"ijbc_1N_gallery_{g}.csv")) for g in ("G1", "G2")]
    probes = reference.read_1n_csv(os.path.join(meta, "ijbc_1N_probe_mixed.csv"))
    if valid is not None:
        emptied = set(templates[~valid].tolist()) - set(templates[valid].tolist())
        kept_pairs = [i for i in range(len(p1)) if p1[i] not in emptied and p2[i] not in emptied]
        p1, p2, label = p1[kept_pairs], p2[kept_pairs], label[kept_pairs]
        galleries, probes = ([(t[[x not in emptied for x in t]], s[[x not in emptied for x in t]]) for t, s in lists]
                             for lists in (galleries, [probes]))
        probes = probes[0]
        embeddings, flipped, faceness, templates, medias = (a[valid] for a in (embeddings, flipped, faceness,
                                                                                templates, medias))
    images = reference.image_input_features(np.concatenate((embeddings, flipped), 1), faceness, mode[1] == "1",
                                            mode[3] == "1", mode[5] != "0", concat=mode[5] == "1")
    features, ids, _ = reference.image2template_feature(images, templates, medias)
    tar = reference.tpr_at_fpr(label, reference.verification(features, ids, p1, p2))
    tops, mean_tpirs, _ = reference.run_1n(images, templates, medias, galleries, *probes)
    return {"tar_at_far": dict(zip(["1e-06", "1e-05", "1e-04", "1e-03", "1e-02", "1e-01"], tar)),
            "rank1": tops["top_1"], "rank5": tops["top_5"], "rank10": tops["top_10"],
            "tpir_at_fpir": {"0.01": mean_tpirs[50], "0.1": mean_tpirs[75]}, "mode": mode}


def assert_matches(record, expected):
    assert set(record) == JSON_KEYS
    for key, value in expected.items():
        assert record[key] == value, key


@pytest.fixture(scope="module")
def extracted(tree):
    """The checkpoint run, stopped by --max-chunks after 2 of its 4 chunks, then run again: (argv,
    stderr of the first run, stdout and stderr of the second)."""
    base, plan = tree
    argv = ["--root", base / "IJBC", "--set", "ijbc", "--checkpoint", base / "backbone.pt",
            "--chunk-size", -(-len(plan.names) // 4)]
    first = run(argv + ["--max-chunks", 2])
    return argv, first, run(argv + ["--save-features", base / "features.npz", "--json"])


def test_checkpoint_run_resumes_an_interrupted_extraction_and_equals_the_references(tree, extracted):
    base, plan = tree
    n = len(plan.names)
    argv, (status, out, err), (status_again, out_again, err_again) = extracted
    assert status == 1 and out == ""
    assert "2 chunks computed, 0 reused, 2 left" in err and "run the same command to resume" in err
    status, out, err = status_again, out_again, err_again
    assert status == 0, err
    assert "2 chunks computed, 2 reused, 0 left" in err  # the first two chunks were not recomputed
    record = json.loads(out)
    assert record["images"] == n and record["templates"] == len(plan.template_subject)
    assert record["pairs"] == len(plan.pairs)
    with np.load(base / "features.npz") as saved:
        embeddings, flipped = saved["embeddings"], saved["embeddings_flip"]
        assert embeddings.shape == (n, 64) and "missing" not in saved
    assert_matches(record, expected_record(base / "IJBC", embeddings, flipped))
    # results beside the checkpoint, never in the repository
    results = base / "ijbc"
    for name in ("ijbc_roc.png", "ijbc_cmc.png", "ijbc_det.png"):
        assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    details = json.loads((results / "ijbc_result.json").read_text())
    assert set(details["galleries"]) == {"G1", "G2"} and details["probes"] == len(plan.probes)
    # the same features again give the same store, reused whole
    status, _, err = run(argv + ["--json"])
    assert status == 0 and "0 chunks computed, 4 reused" in err


@pytest.mark.slow
def test_features_run_is_the_command_a_user_types(tree, extracted):
    base, plan = tree
    with np.load(base / "features.npz") as saved:
        embeddings, flipped = saved["embeddings"], saved["embeddings_flip"]
    before = set(os.listdir(REPO))
    finished = subprocess.run([sys.executable, os.path.join(REPO, "eval_ijb.py"), "--root", base / "IJBC",
                               "--features", base / "features.npz", "--json"], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.strip().splitlines()
    assert len(lines) == 1  # one JSON object, nothing else
    assert_matches(json.loads(lines[0]), expected_record(base / "IJBC", embeddings, flipped))
    assert set(os.listdir(REPO)) == before and (base / "ijbc" / "ijbc_roc.png").exists()  # beside the features
    status, out, _ = run(["--root", base / "IJBC", "--features", base / "features.npz", "--out-dir", base / "t"])
    assert status == 0 and out.startswith("IJB-C 1:1, mode N1D1F2:") and "both / mean" in out
    assert f"{100 * json.loads(lines[0])['tar_at_far']['1e-01']:.2f}%" in out


def test_features_without_mirror_images_default_to_f0_and_refuse_f2(tree, tmp_path):
    base, plan = tree
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((len(plan.names), 8)).astype(np.float32)
    save_npz(tmp_path / "plain.npz", embeddings=embeddings)
    argv = ["--root", base / "IJBC", "--features", tmp_path / "plain.npz", "--out-dir", tmp_path]
    status, out, err = run(argv + ["--json"])
    assert status == 0, err
    assert_matches(json.loads(out), expected_record(base / "IJBC", embeddings, embeddings, "N1D1F0"))
    status, _, err = run(argv + ["--mode", "N1D1F2"])
    assert status == 2 and "--mode N1D1F2 needs mirror-image features, which these features lack: use N1D1F0" in err
    status, _, err = run(argv + ["--mode", "N1D2F0"])
    assert status == 2 and "is not N{0,1}D{0,1}F{0,1,2}" in err
    # a bad --mode is refused before any image is read for a model
    status, _, err = run(["--root", base / "IJBC", "--checkpoint", base / "backbone.pt", "--feature-dir",
                          tmp_path / "store", "--mode", "N1D2F0", "--out-dir", tmp_path])
    assert status == 2 and "is not N{0,1}D{0,1}F{0,1,2}" in err and not (tmp_path / "store").exists()
    status, _, err = run(argv + ["--checkpoint", base / "backbone.pt"])
    assert status == 2 and "--features replaces the model: drop --checkpoint" in err
    status, _, err = run(argv + ["--max-chunks", 1])
    assert status == 2 and "extraction options" in err


def test_missing_images_stop_the_run_or_are_left_out_and_counted(tree, tmp_path):
    """--skip-missing: an image of a several-image template and the only image of another are gone.
    The first template pools what is left; the second is emptied, named in one line, and dropped from
    the pairs and the 1:N lists; the JSON counts the images and templates used and those left out."""
    base, plan = tree
    root = tmp_path / "IJBC"
    shutil.copytree(base / "IJBC", root)
    sizes = {t: int((plan.templates == t).sum()) for t in plan.template_subject}
    shared = next(t for t in plan.probes if sizes[t] > 1)
    lone = next(t for t in plan.probes if sizes[t] == 1)
    gone = [plan.names[int(np.flatnonzero(plan.templates == shared)[0])],
            plan.names[int(np.flatnonzero(plan.templates == lone)[0])]]
    for name in gone:
        os.remove(root / "loose_crop" / name)
    argv = ["--root", root, "--checkpoint", base / "backbone.pt", "--feature-dir", tmp_path / "store",
            "--out-dir", tmp_path / "out"]
    status, _, err = run(argv)
    first = min(plan.names.index(name) for name in gone)
    assert status == 1 and f"error: {root / 'loose_crop' / plan.names[first]}: image listed on line {first + 1} of " in err
    assert "--skip-missing leaves them out" in err
    status, out, err = run(argv + ["--skip-missing", "--json", "--save-features", tmp_path / "f.npz"])
    skipped = [name in gone for name in plan.names]
    assert status == 0, err
    assert f"{sum(skipped)} of {len(plan.names)} images missing and left out of their templates; 1 templates " \
           "emptied" in err
    pairs_of_lone = int(((plan.pairs[:, 0] == lone) | (plan.pairs[:, 1] == lone)).sum())
    row = plan.templates.tolist().index(lone)
    assert f"template {lone} emptied: all 1 of its images are missing (first {plan.names[row]}, line {row + 1} of " in err
    assert f"left out of {pairs_of_lone} pairs and the probe list\n" in err
    with np.load(tmp_path / "f.npz") as saved:
        embeddings, flipped, missing = saved["embeddings"], saved["embeddings_flip"], saved["missing"]
    assert missing.tolist() == skipped and not embeddings[missing].any()
    record = json.loads(out)
    assert (record["images"], record["skipped_images"]) == (len(plan.names) - sum(skipped), sum(skipped))
    assert (record["templates"], record["emptied_templates"]) == (len(plan.template_subject) - 1, 1)
    assert record["pairs"] == len(plan.pairs) - pairs_of_lone
    assert_matches(record, expected_record(root, embeddings, flipped, valid=~missing))
    details = json.loads((tmp_path / "out" / "ijbc_result.json").read_text())
    assert details["emptied_template_ids"] == [lone] and details["probes"] == len(plan.probes) - 1
    status, again, _ = run(["--root", root, "--features", tmp_path / "f.npz", "--json", "--out-dir", tmp_path])
    assert status == 0 and json.loads(again) == record


def test_bad_inputs_are_named(tree, tmp_path):
    base, plan = tree
    root = tmp_path / "IJBC"
    shutil.copytree(base / "IJBC" / "meta", root / "meta")
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((len(plan.names), 8)).astype(np.float32)
    save_npz(tmp_path / "f.npz", embeddings=embeddings)
    argv = ["--root", root, "--features", tmp_path / "f.npz", "--out-dir", tmp_path]
    pairs = root / "meta" / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    pairs.write_text("\n".join(lines[:3] + ["", f"{plan.pairs[0, 0]} 999999 0"] + lines[3:]) + "\n")
    status, _, err = run(argv)
    assert status == 1 and "ijbc_template_pair_label.txt, line 5: template 999999 has no image in " in err
    pairs.write_text("\n".join(lines) + "\n")
    gallery = root / "meta" / "ijbc_1N_gallery_G1.csv"
    rows = gallery.read_text().splitlines()
    other = next(t for t in plan.galleries["second"])
    gallery.write_text("\n".join(rows + [f"{other},{rows[1].split(',')[1]},x.jpg"]) + "\n")
    status, _, err = run(argv)
    assert status == 1 and f"ijbc_1N_gallery_G1.csv, line {len(rows) + 1}: subject" in err
    assert "a gallery holds one per subject" in err
    gallery.write_text("\n".join(rows) + "\n")
    embeddings[3, 2] = np.nan
    save_npz(tmp_path / "f.npz", embeddings=embeddings)
    status, _, err = run(argv)
    assert status == 1 and "f.npz: image row 3 (line 4 of the 5-point file) has a NaN or infinite feature" in err
    save_npz(tmp_path / "f.npz", embeddings=embeddings, embeddings_flip=embeddings[:, :4])
    status, _, err = run(argv)
    assert status == 1 and f"f.npz: embeddings_flip has shape ({len(plan.names)}, 4), embeddings ({len(plan.names)}, 8)" in err
