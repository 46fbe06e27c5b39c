"""The eval scripts and the tools fail as well as train.py does (issue 26): every output folder is
checked writable at start and refused in one line; the numbers are printed before any file is
written, so a write that fails still leaves them on the screen; compare_faces checks its checkpoint
(and every other input) before it detects a face; every tool refuses an output it cannot write before
its work; check_data names an empty identity by its folder; under torchrun a stopped run exits 1.

Scripts run as a user runs them, as __main__, in a forked child (fast: the packages are already
imported); where permissions matter the child drops to user `nobody`, since the tests run as root and
root ignores file permissions."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import pytest
import torch

# Imported here, before any fork: a child running as `nobody` cannot import more (the interpreter's
# standard library lives under /root).
import evaluation.blufr.cli  # noqa: F401
import evaluation.blufr.figures  # noqa: F401
import evaluation.ijb.cli  # noqa: F401
import evaluation.ijb.plot  # noqa: F401
import evaluation.megaface.cli  # noqa: F401
import evaluation.plot  # noqa: F401
import evaluation.verification.cli  # noqa: F401
from backbone import build_backbone
from dataset import write_bin, write_record_pack
from dataset.synthetic import SyntheticFaces, make_pairs
from dataset.synthetic_ijb import write_synthetic_ijb
from evaluation.blufr.config import write_blufr_config
from evaluation.megaface.files import save_megaface_features
from evaluation.model_loading import load_backbone
from runtime import DataFormatError, save_npz
from runtime.artifacts import PARTIAL_SUFFIX, backbone_file
from tools.data.check_data import main as check_data_main
from tools.model.compare_faces import main as compare_main

from script_runs import run_script  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def shared():
    """A folder user `nobody` can read (pytest's own is 0700), removed at the end."""
    folder = tempfile.mkdtemp(prefix="surfaces_eval_")
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def readable_tree(root) -> None:
    for folder, _, names in os.walk(root):
        os.chmod(folder, 0o755)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o644)


@pytest.fixture(scope="module")
def inputs(shared):
    """Real inputs of every eval script, in a folder `locked` (0555: nobody may write there) and
    readable copies in `open` (0777: anybody may write there): a 32-d MobileFaceNet checkpoint, a
    20-pair .bin, verification, IJB, MegaFace and BLUFR features, and a synthetic IJB-C tree."""
    torch.manual_seed(0)
    for name in ("locked", "open"):
        folder = os.path.join(shared, name)
        os.mkdir(folder)
        torch.save(backbone_file("mobilefacenet", 32, build_backbone("mobilefacenet", 32).state_dict()),
                   os.path.join(folder, "backbone.pt"))
        images, issame = make_pairs("lfw", 20, 0, 12, seed=3, difficulty=0.3)
        write_bin(os.path.join(folder, "lfw.bin"), images, issame)
        rng = np.random.default_rng(0)
        centres = rng.standard_normal((40, 8)).astype(np.float32)
        first = np.arange(20)
        second = np.where(issame, first, first + 20)  # a genuine pair shares its centre
        embeddings = np.empty((40, 8), np.float32)
        embeddings[0::2] = centres[first] + 0.4 * rng.standard_normal((20, 8))
        embeddings[1::2] = centres[second] + 0.4 * rng.standard_normal((20, 8))
        save_npz(os.path.join(folder, "lfw.npz"), embeddings=embeddings, issame=issame)
        labels = np.arange(12) % 4
        save_megaface_features(os.path.join(folder, "megaface.npz"),
                               centres[labels] + 0.3 * rng.standard_normal((12, 8)).astype(np.float32), labels,
                               rng.standard_normal((30, 8)).astype(np.float32))
        blufr_labels = np.arange(24) % 6
        write_blufr_config(os.path.join(folder, "blufr.mat"), [f"P{label}_{i:04d}.jpg" for i, label in
                                                                enumerate(blufr_labels)],
                           blufr_labels, [np.arange(2)] * 2, [np.arange(24)] * 2, [np.arange(4)] * 2,
                           [np.arange(6, 24)] * 2)
        np.save(os.path.join(folder, "blufr.npy"),
                (centres[blufr_labels] + 0.5 * rng.standard_normal((24, 8))).astype(np.float32))
        plan = write_synthetic_ijb(os.path.join(folder, "IJBC"), "ijbc", subjects=4, probes_per_subject=1,
                                   unenrolled_subjects=1, seed=2, difficulty=0.3)
        save_npz(os.path.join(folder, "ijb.npz"),
                 embeddings=rng.standard_normal((len(plan.names), 8)).astype(np.float32))
        os.makedirs(os.path.join(folder, "probes", "a"))
        os.makedirs(os.path.join(folder, "distractors"))
        readable_tree(folder)
    locked, opened = (os.path.join(shared, name) for name in ("locked", "open"))
    load_backbone(os.path.join(locked, "backbone.pt"))  # torch.load's own imports, before a child needs them
    os.chmod(locked, 0o555)
    os.chmod(opened, 0o777)
    return locked, opened


def listing(folder) -> list:
    return sorted(os.path.relpath(os.path.join(where, name), folder)
                  for where, subfolders, names in os.walk(folder) for name in subfolders + names)


# ---------------------------------------------------------------- item 2: checked at start, as another user

REFUSED = {  # script, its arguments ({L}: the locked folder, {O}: the open one), what the one line names
    "lfw beside the checkpoint": ("eval_lfw.py", ["--checkpoint", "{L}/backbone.pt", "--bin", "{L}/lfw.bin"],
                                  "ROC figure (beside the checkpoint or the features file) {L}/roc_lfw_insightface.png"),
    "agedb beside the checkpoint": ("eval_agedb30.py", ["--checkpoint", "{L}/backbone.pt", "--bin", "{L}/lfw.bin"],
                                    "ROC figure (beside the checkpoint or the features file) {L}/roc_lfw_insightface.png"),
    "cfp beside the checkpoint": ("eval_cfp.py", ["--checkpoint", "{L}/backbone.pt", "--set", "cfp_ff", "--bin",
                                                  "{L}/lfw.bin", "--protocol", "seed"],
                                  "ROC figure (beside the checkpoint or the features file) {L}/roc_cfp_ff_seed.png"),
    "lfw beside the features": ("eval_lfw.py", ["--features", "{L}/lfw.npz"],
                                "ROC figure (beside the checkpoint or the features file) {L}/roc_lfw_insightface.png"),
    "lfw --save-features": ("eval_lfw.py", ["--features", "{L}/lfw.npz", "--roc", "{O}/roc.png", "--save-features",
                                            "{L}/again.npz"], "--save-features {L}/again.npz"),
    "ijb store beside the checkpoint": ("eval_ijb.py", ["--root", "{L}/IJBC", "--checkpoint", "{L}/backbone.pt"],
                                        "feature store (default: ijbc_features/ beside the checkpoint) {L}/ijbc_features"),
    "ijb results beside the features": ("eval_ijb.py", ["--root", "{L}/IJBC", "--features", "{L}/ijb.npz"],
                                        "results folder (default: ijbc/ beside the checkpoint or the features file) "
                                        "{L}/ijbc"),
    "ijb --out-dir": ("eval_ijb.py", ["--root", "{L}/IJBC", "--features", "{L}/ijb.npz", "--out-dir", "{L}/results/ijb"],
                      "--out-dir {L}/results/ijb"),
    "megaface store beside the checkpoint": ("eval_megaface.py", ["--checkpoint", "{L}/backbone.pt", "--probes",
                                                                  "{L}/probes", "--distractors", "{L}/distractors"],
                                             "feature store (default: megaface_features/ beside the checkpoint) "
                                             "{L}/megaface_features"),
    "megaface results beside the features": ("eval_megaface.py", ["--features", "{L}/megaface.npz"],
                                             "results folder (default: megaface/ beside the checkpoint or the "
                                             "features file) {L}/megaface"),
    "megaface --devkit-out": ("eval_megaface.py", ["--features", "{L}/megaface.npz", "--out-dir", "{O}/mf",
                                                   "--devkit-out", "{L}/devkit"], "--devkit-out {L}/devkit"),
    "blufr figures beside the features": ("eval_blufr.py", ["--config", "{L}/blufr.mat", "--features", "{L}/blufr.npy"],
                                          "figures folder (default: beside the checkpoint or the features file) {L}"),
    "convert_weights into a new folder under it": ("tools/model/convert_weights.py",
                                                   ["--source", "insightface", "--arch", "ir18", "{L}/backbone.pt",
                                                    "{L}/converted/ir18.pt"], "output {L}/converted/ir18.pt"),
    "deepglint_features OUT.bin": ("tools/model/deepglint_features.py",
                                   ["--checkpoint", "{L}/backbone.pt", "{L}/probes", "{L}/dg.bin"], "OUT.bin {L}/dg.bin"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_output_folder_that_cannot_be_written_is_refused_at_start_in_one_line(inputs, case):
    locked, opened = inputs
    script, argv, named = REFUSED[case]
    argv = [arg.format(L=locked, O=opened) for arg in argv]
    before = listing(locked)
    started = time.perf_counter()
    status, out, err = run_script(script, argv, other_user=True)
    named = named.format(L=locked)
    assert status == 2 and out == "", err
    line = one_line(err)
    assert line.startswith(f"error: {named}: {locked} cannot be written by this user; "), line
    assert "a folder you can write" in line.split("; ", 1)[1], line  # and what to do instead
    assert listing(locked) == before  # nothing read, nothing written
    assert time.perf_counter() - started < 60


def test_with_its_outputs_elsewhere_the_checkpoint_in_a_read_only_folder_is_evaluated(inputs):
    """The issue's repro: the checkpoint in a folder its user cannot write. With the ROC elsewhere
    the run prints its numbers and writes the figure."""
    locked, opened = inputs
    roc = os.path.join(opened, "lfw_roc", "roc.png")
    status, out, err = run_script("eval_lfw.py", ["--checkpoint", f"{locked}/backbone.pt", "--bin", f"{locked}/lfw.bin",
                                                  "--roc", roc, "--json"], other_user=True)
    assert status == 0, err
    record = json.loads(out)
    assert record["n_pairs"] == 20 and 0 <= record["accuracy_mean"] <= 1 and record["roc"] == roc
    with open(roc, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- item 2: the numbers first, then the files

def block_path(path):
    """A `before` hook: a folder where the writer's temporary file for `path` goes (`path`.PID.partial,
    PID the child's), so that the write fails after every check at start has passed."""
    return lambda: os.makedirs(f"{path}.{os.getpid()}{PARTIAL_SUFFIX}")


NUMBERS_FIRST = {  # script, arguments (O: a writable folder), the file whose write fails, the printed numbers
    "eval_lfw.py": (["--features", "O/lfw.npz", "--roc", "O/first/roc.png", "--json"], "O/first/roc.png",
                    lambda record: record["n_pairs"] == 20 and "accuracy_mean" in record),
    "eval_ijb.py": (["--root", "O/IJBC", "--features", "O/ijb.npz", "--out-dir", "O/first_ijb", "--json"],
                    "O/first_ijb/ijbc_result.json", lambda record: "rank1" in record and record["skipped_images"] == 0),
    "eval_megaface.py": (["--features", "O/megaface.npz", "--out-dir", "O/first_mf", "--json"],
                         "O/first_mf/megaface.json", lambda record: record["probes"] == 12 and "rank1" in record),
    "eval_blufr.py": (["--config", "O/blufr.mat", "--features", "O/blufr.npy", "--out-dir", "O/first_blufr", "--json"],
                      "O/first_blufr/blufr_roc.png", lambda record: "vr" in record and "dir" in record),
}


@pytest.mark.parametrize("script", sorted(NUMBERS_FIRST))
def test_the_numbers_are_printed_before_the_files_are_written(inputs, script):
    _, opened = inputs
    argv, blocked, printed = NUMBERS_FIRST[script]
    argv = [arg.replace("O/", opened + "/") for arg in argv]
    blocked = blocked.replace("O/", opened + "/")
    status, out, err = run_script(script, argv, before=block_path(blocked))
    assert status == 1 and "Traceback" not in err, err
    assert printed(json.loads(out.strip().splitlines()[-1]))  # the numbers are all there
    assert err.strip().splitlines()[-1] == (f"error: {blocked}: could not be written (Is a directory); the numbers "
                                            "printed above are complete")


# ---------------------------------------------------------------- item 3: compare_faces checks before detecting

@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A photo without a face (detection would say so) and a file that is no image (reading would)."""
    folder = tmp_path_factory.mktemp("photos")
    cv2.imwrite(str(folder / "blank.jpg"), np.full((240, 320, 3), 128, dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a JPEG")
    return folder


def test_compare_faces_checks_the_checkpoint_before_any_photo(inputs, photos, tmp_path):
    locked, _ = inputs
    blank, broken = str(photos / "blank.jpg"), str(photos / "broken.jpg")
    with pytest.raises(DataFormatError, match=f"^{tmp_path}/gone.pt: checkpoint file not found$"):
        compare_main([blank, broken, "--checkpoint", str(tmp_path / "gone.pt"), "--threshold", "0.3"])
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(f"{blank} {broken}\n{blank} {tmp_path}/missing.jpg\n")
    with pytest.raises(DataFormatError, match=rf"missing\.jpg: photo not found \(listed in {pairs}, line 2\)"):
        compare_main(["--pairs", str(pairs), "--checkpoint", f"{locked}/backbone.pt", "--threshold", "0.3"])
    with pytest.raises(DataFormatError, match="gone.bin: verification file not found"):
        compare_main([blank, blank, "--checkpoint", f"{locked}/backbone.pt", "--threshold-from",
                      str(tmp_path / "gone.bin")])
    # every input good: now the photo's own problem shows
    with pytest.raises(DataFormatError, match="blank.jpg: no face found"):
        compare_main([blank, blank, "--checkpoint", f"{locked}/backbone.pt", "--threshold-from", f"{locked}/lfw.bin",
                      "--device", "cpu"])


# ---------------------------------------------------------------- item 4: the tools refuse what they cannot write

def tool_cases(folder, checkpoint, pack, bin_path):
    """Each tool with an output below a regular file (no user can create a folder there)."""
    bad = os.path.join(folder, "a_file", "out")
    return {
        "tools/data/make_synthetic.py": [bad, "--identities", 2, "--lfw-pairs", 0, "--agedb-pairs", 0, "--cfp-pairs", 0],
        "tools/data/make_synthetic_ijb.py": [bad],
        "tools/data/make_synthetic_protocols.py": [bad],
        "tools/data/align_faces.py": [folder, bad],
        "tools/data/images2rec.py": ["--folder", folder, bad],
        "tools/data/rec2images.py": [pack, bad],
        "tools/data/bin2images.py": [bin_path, bad],
        "tools/data/pack_crops.py": [folder, bad + ".npy"],
        "tools/data/clean_labels.py": [folder, pack, "--out", bad + ".tsv"],
        "tools/model/export.py": ["--checkpoint", checkpoint, "--format", "onnx", bad + ".onnx"],
        "tools/model/convert_weights.py": ["--source", "insightface", "--arch", "ir18", checkpoint, bad + ".pt"],
        "tools/model/deepglint_features.py": ["--checkpoint", checkpoint, folder, bad + ".bin"],
        "tools/model/model_table.py": ["--out", bad + ".md"],
        "tools/model/feature_space.py": ["--out", bad, "--classes", 3, "--images-per-class", 4, "--epochs", 1,
                                         "--wide-epochs", 0, "--frames", 2, "--plot-images-per-class", 2],
        "tools/monitor/plot_run.py": [folder, "--out", bad + ".png"],
        "tools/bench/benchmark.py": ["--csv", bad + ".csv", "--steps", 1, "--warmup", 0, "--batch-size", 4,
                                     "--num-classes", 20, "--device", "cpu"],
        "tools/bench/benchmark_ijb.py": ["--out", bad],
        "tools/bench/benchmark_deepglint.py": ["--out", bad, "--rows", 50, "--probes", 10, "--identities", 2],
        "tools/bench/benchmark_deploy.py": ["--exports", bad, "--backbones", "mobilefacenet", "--engines", "eager"],
    }


def test_every_tool_refuses_an_output_it_cannot_write_in_one_line_before_its_work(inputs, tmp_path):
    locked, _ = inputs
    (tmp_path / "a_file").write_text("a file, not a folder\n")
    write_record_pack(tmp_path / "pack", ((SyntheticFaces(seed=1).render(i, 0), i) for i in range(2)), num_classes=2)
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 1, "loss": 1.0, "train_accuracy": 0.5, '
                                            '"lr": 0.1}\n{"event": "summary"}\n')
    cases = tool_cases(str(tmp_path), f"{locked}/backbone.pt", str(tmp_path / "pack"), f"{locked}/lfw.bin")
    unlisted = sorted(f"tools/{group}/{name}" for group in os.listdir(os.path.join(REPO, "tools"))
                      if os.path.isdir(os.path.join(REPO, "tools", group))
                      for name in os.listdir(os.path.join(REPO, "tools", group)) if name.endswith(".py")
                      and f"tools/{group}/{name}" not in cases)
    # what writes no file of its own, or only a server's state: the rest all have a case above
    assert unlisted == ["tools/bench/baseline_old_step.py", "tools/bench/benchmark_detect.py",
                        "tools/bench/benchmark_eval.py", "tools/bench/benchmark_layers.py",
                        "tools/bench/benchmark_loader.py", "tools/data/check_data.py", "tools/model/compare_faces.py",
                        "tools/monitor/visdom_server.py"]
    for script, argv in cases.items():
        status, out, err = run_script(script, argv)
        line = one_line(err)
        assert status == 2 and "Traceback" not in err, (script, err)
        assert line.startswith("error: ") and f"{tmp_path}/a_file is a file, not a folder" in line, (script, line)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "metrics.jsonl", "pack"]  # nothing was written


def test_convert_weights_creates_the_output_folder_before_converting(tmp_path):
    """A folder that does not exist is created (as every writer here does), and the result loads."""
    from test_convert_weights import insightface_iresnet_state
    torch.save(insightface_iresnet_state((2, 2, 2, 2)), tmp_path / "backbone.pth")
    out = tmp_path / "new" / "deeper" / "ir18.pt"
    status, stdout, err = run_script("tools/model/convert_weights.py", ["--source", "insightface", "--arch", "ir18",
                                                                       tmp_path / "backbone.pth", out])
    assert status == 0, err
    assert stdout.startswith(f"{tmp_path / 'backbone.pth'} (insightface) -> {out}: ir18, 512-d")
    assert load_backbone(out)[1:] == ("ir18", 512)


# ---------------------------------------------------------------- item 7: an empty identity, by its folder

def test_check_data_names_an_empty_identity_folder_by_its_name(tmp_path, capsys):
    faces = SyntheticFaces(seed=4)
    for identity in ("alice", "carol"):
        (tmp_path / identity).mkdir()
        for index in range(2):
            cv2.imwrite(str(tmp_path / identity / f"{index}.jpg"),
                        cv2.cvtColor(faces.render(len(identity) + index, index), cv2.COLOR_RGB2BGR))
    (tmp_path / "bob").mkdir()  # label 1 between the two: its folder is what the user must look at
    with pytest.raises(SystemExit) as stopped:
        check_data_main([str(tmp_path), "--workers", "1"])
    assert stopped.value.code == 1
    out = capsys.readouterr().out
    assert f"identities without images: 1 ({tmp_path / 'bob'})" in out.splitlines()


# ---------------------------------------------------------------- item 9: the exit status under torchrun

@pytest.mark.slow
def test_a_signal_to_torchrun_stops_the_workers_at_a_checkpoint_and_torchrun_exits_1(tmp_path):
    """What docs/training.md says: train.py alone exits 128 + the signal; under torchrun the status
    the shell sees is torchrun's own, 1, after it has passed the signal on to the workers, which
    write their checkpoint and stop."""
    faces = SyntheticFaces(seed=6)
    write_record_pack(tmp_path / "pack", ((faces.render(i // 4, i % 4), i // 4) for i in range(24)), num_classes=6)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py", "--",
               f"--train_data={tmp_path / 'pack'}", "--val_sets=", "--batch_size=8", "--workers=0",
               f"--output_dir={tmp_path}", "--name=run", "--visdom=false", "--progress=false", "--precision=fp32",
               "--log_freq=1", "--test_freq=0", "--save_freq=1", "--embedding_size=32", "--max_steps=100000",
               "--epochs=100000"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "run" / "checkpoint.pt").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert "got signal: 15" in stderr  # torchrun's own report
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "stopped by SIGTERM at step" in log and "checkpoint written" in log
