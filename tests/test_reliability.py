"""A long run fails fast on bad input and never loses work: every bad value refused before anything
is built, the run-folder lock, the resume guard, SIGTERM then resume, bad records skipped and counted,
the previous checkpoint as a fallback, evaluation failures that cost no checkpoint.

Runs are tiny (MobileFaceNet on a 60-image synthetic pack). train.main runs in this process where a
subprocess adds nothing; exit statuses, signals and the lock use real subprocesses."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch

import train
from dataset import ImageListDataset, RecordDataset, encode_image, write_bin, write_record_pack
from dataset.check import scan_training_source
from dataset.synthetic import SyntheticFaces, make_pairs
from runtime import UserError
from training.run_folder import lock_run_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability")
    faces = SyntheticFaces(seed=5)
    pack = folder / "pack"
    write_record_pack(pack, ((faces.render(i // 10, i % 10), i // 10) for i in range(60)), num_classes=6)
    images, issame = make_pairs("lfw", 20, first_identity=100, num_identities=10, seed=5)
    write_bin(pack / "lfw.bin", images, issame)
    images_folder = folder / "images"
    for i in range(40):
        identity = images_folder / f"id{i // 10}"
        identity.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(identity / f"{i % 10}.jpg"), cv2.cvtColor(faces.render(i // 10, i % 10), cv2.COLOR_RGB2BGR))
    return folder


def base_args(train_data, out_dir, name, *extra):
    return [f"--train_data={train_data}", "--val_sets=", "--batch_size=16", "--workers=0", f"--output_dir={out_dir}",
            f"--name={name}", "--visdom=false", "--progress=false", "--precision=fp32", "--lr=0.01", "--log_freq=1",
            "--test_freq=0", "--save_freq=0", *extra]


def subprocess_train(args, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, **popen)


def events(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["event"] == kind]


# ---------------------------------------------------------------- everything checked before anything is built

BAD_VALUES = [
    (["--lr_rate=0.1"], "unknown config key 'lr_rate'"),
    (["--backbone=resnet999"], "--backbone=resnet999: unknown backbone 'resnet999'; valid: attention56,"),
    (["--head=arcfase"], "did you mean 'arcface'?"),
    (["--batch_size=0"], "batch_size=0"),
    (["--batch_size=-4"], "batch_size=-4"),
    (["--batch_size=15", "--grad_accum=2"], "batch_size=15"),
    (["--log_freq=0"], "log_freq=0"),
    (["--workers=-1"], "workers=-1"),
    (["--lr=-1"], "lr=-1.0"),
    (["--epochs=0"], "epochs=0"),
    (["--sample_rate=1.5"], "sample_rate=1.5"),
    (["--embedding_size=0"], "embedding_size=0"),
    (["--weight_decay=-0.1"], "weight_decay=-0.1"),
    (["--momentum=1.0"], "momentum=1.0"),
    (["--val_protocol=foo"], "unknown val_protocol 'foo'; valid: insightface, seed"),
    (["--optimizer=adam"], "unknown optimizer 'adam'; valid: adamw, sgd"),
    (["--schedule=linear"], "unknown schedule 'linear'; valid: cosine, multistep, poly"),
    (["--precision=fp16"], "precision 'fp16' on the CPU"),
    (["--device=tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda"),
    (["--aux_loss=centre"], "unknown aux_loss 'centre'; valid: '' (none), agent_center, center"),
    (["--s=0"], "head 'arcface' refuses its options"),
    (['--head_options={"easy": true}'], "head 'arcface' refuses its options"),
    (["--head=sphereface"], "m must be an integer"),
    (["--dropout=0.3"], "dropout=0.3 is invalid; valid: 0 for backbone 'mobilefacenet'"),
    (["--milestones=5,2"], "milestones=[5.0, 2.0]"),
    (['--backbone_options={"mask_ratio": 0.5}'], "options of mobilefacenet: none"),
    (["--backbone=vit_t", '--backbone_options={"mask_ratio": 1.5}'], "backbone 'vit_t' refuses its options"),
    (["--lr=nan"], "lr=nan"),
    (["--num_classes=3"], "the largest label is 5, but num_classes says 3 classes"),
    (["--batch_size=64"], "60 images, fewer than one batch of batch_size=64"),
    (["--val_sets=lfw,agedb_30"], "verification set 'agedb_30'"),
    (["--init_backbone=/nonexistent/backbone.pt"], "init_backbone: /nonexistent/backbone.pt: checkpoint file not found"),
    (["--resume=/nonexistent/checkpoint.pt"], "/nonexistent/checkpoint.pt: checkpoint file not found"),
]


@pytest.mark.parametrize("extra, message", BAD_VALUES, ids=[" ".join(extra) for extra, _ in BAD_VALUES])
def test_every_bad_value_is_refused_before_the_run_folder_exists(data, tmp_path, extra, message):
    with pytest.raises(UserError) as refused:
        train.main(base_args(data / "pack", tmp_path, "bad", "--max_steps=2", *extra))
    text = str(refused.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "bad").exists()


def test_a_bad_value_in_an_override_file_names_its_line(data, tmp_path):
    override = tmp_path / "override.py"
    override.write_text("name = 'x'\n# the learning rate\nlr = -0.5\n")
    with pytest.raises(UserError, match=r"override.py, line 3: lr=-0.5 is invalid; valid: a number > 0"):
        train.main([str(override), *[a for a in base_args(data / "pack", tmp_path, "bad") if not a.startswith("--lr=")]])


def test_the_property_file_may_not_claim_fewer_classes_than_the_labels(data, tmp_path):
    pack = tmp_path / "pack"
    pack.mkdir()
    for name in ("train.rec", "train.idx"):
        (pack / name).write_bytes((data / "pack" / name).read_bytes())
    (pack / "property").write_text("4,112,112")
    with pytest.raises(UserError, match=r"the largest label is 5, but .*property says 4 classes"):
        train.main(base_args(pack, tmp_path, "bad"))


@pytest.mark.slow
def test_a_refusal_is_one_line_with_exit_status_2_and_no_traceback(data, tmp_path):
    for extra in (["--lr_rate=0.1"], ["--batch_size=0"], ["--num_classes=3"]):
        started = time.monotonic()
        result = subprocess_train(base_args(data / "pack", tmp_path, "bad", *extra))
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
        assert time.monotonic() - started < 60  # generous: imports alone take seconds on a loaded machine
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- one run per folder

@pytest.mark.slow
def test_a_second_run_on_a_held_folder_exits_at_once_naming_the_holder(data, tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    holder = lock_run_folder(str(run_dir))  # as a running train.py holds it
    result = subprocess_train(base_args(data / "pack", tmp_path, "busy", "--max_steps=1"))
    assert result.returncode == 2
    assert f"is in use by train.py PID {os.getpid()} on host" in result.stderr
    assert not (run_dir / "checkpoint.pt").exists()
    holder.close()  # released, as the OS releases it when the holder dies
    assert subprocess_train(base_args(data / "pack", tmp_path, "busy", "--max_steps=1")).returncode == 0


# ---------------------------------------------------------------- resume knows what changed

def test_resume_refuses_a_new_model_and_logs_a_new_schedule(data, tmp_path):
    args = base_args(data / "pack", tmp_path, "run", "--max_steps=2")
    train.main(args)
    for extra, named in ((["--backbone=ir18", "--embedding_size=512"], "backbone was 'mobilefacenet', now 'ir18'"),
                         (["--seed=3"], "seed was 0, now 3")):
        with pytest.raises(UserError, match=named) as refused:
            train.main(args + extra)
        assert "--init_backbone=" in str(refused.value)
    summary = train.main(args + ["--max_steps=4", "--lr=0.5"])
    assert summary["steps"] == 4
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "changed since the checkpoint: lr 0.01 -> 0.5; max_steps 2 -> 4" in log
    assert events(tmp_path / "run", "config_change")[0]["changes"] == {"lr": [0.01, 0.5], "max_steps": [2, 4]}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["lr"] == 0.5 and [entry["event"] for entry in config["history"]] == ["start", "resume"]
    assert config["history"][1]["step"] == 2 and config["history"][1]["changes"]["lr"] == [0.01, 0.5]


# ---------------------------------------------------------------- checkpoints

@pytest.mark.slow
def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(data, tmp_path):
    args = base_args(data / "pack", tmp_path, "run", "--save_freq=1")
    train.main(args + ["--max_steps=3"])
    run_dir = tmp_path / "run"
    previous = torch.load(run_dir / "checkpoint.prev.pt", weights_only=True)
    assert previous["step"] == 2  # the one before the latest (step 3) is kept
    latest = run_dir / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated, as by a full disk
    summary = train.main(args + ["--max_steps=4"])
    assert summary["steps"] == 4
    log = (run_dir / "log.txt").read_text()
    assert f"{latest} cannot be read" in log and f"resuming from {run_dir / 'checkpoint.prev.pt'}" in log
    assert "resumed from" in log and "at step 2" in log
    # an explicit --resume of a damaged file is one line naming it
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match=f"{tmp_path / 'broken.pt'}: not a PyTorch checkpoint"):
        train.main(base_args(data / "pack", tmp_path, "other", f"--resume={tmp_path / 'broken.pt'}"))


def test_a_failing_evaluation_costs_no_checkpoint(data, tmp_path):
    images, issame = make_pairs("lfw", 20, first_identity=100, num_identities=10, seed=5)
    payloads = [encode_image(image) for image in images]
    payloads[7] = b"\xff\xd8 not a jpeg"  # opens (payloads stay encoded) but fails when evaluated
    with open(tmp_path / "broken.bin", "wb") as handle:
        pickle.dump((payloads, [bool(v) for v in issame]), handle)
    summary = train.main(base_args(data / "pack", tmp_path, "run", "--max_steps=2", "--test_freq=1",
                                   f"--val_sets={tmp_path / 'broken.bin'}"))
    assert summary["steps"] == 2 and summary["checkpoint_step"] == 2
    assert [e["step"] for e in events(tmp_path / "run", "val_error")] == [1, 2]
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2


# ---------------------------------------------------------------- SIGTERM at a step boundary, then resume

@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_resumed_run_is_bit_identical(data, tmp_path):
    # subprocesses all three, with one thread each: a different thread count alone changes the floats
    common = ["--max_steps=7", "--flip=true", "--workers=1"]
    assert subprocess_train(base_args(data / "pack", tmp_path, "straight", *common)).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "stopped"
    # its own session: the signal goes to the whole process group (the loader's worker too), as SLURM sends it
    process = subprocess.Popen([sys.executable, "train.py", *base_args(data / "pack", tmp_path, "stopped", *common)],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "metrics.jsonl").exists() or not events(run_dir, "train"):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    stopped = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 1 <= stopped["step"] < 7 and json.loads(out.strip().splitlines()[-1])["stopped"] == "SIGTERM"
    assert "stopped by SIGTERM" in (run_dir / "log.txt").read_text()
    resumed = subprocess_train(base_args(data / "pack", tmp_path, "stopped", *common))
    assert resumed.returncode == 0 and json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 7
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    for part in ("backbone", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after SIGTERM and resume"


@pytest.mark.slow
def test_a_resumed_run_draws_the_same_random_numbers(data, tmp_path):
    # ViT-T masks tokens and drops paths at random in training: a resume must replay the same draws
    vit = ["--backbone=vit_t", "--embedding_size=64", "--batch_size=8", '--backbone_options={"mask_ratio": 0.3}',
           "--flip=true"]
    train.main(base_args(data / "pack", tmp_path, "straight", *vit, "--max_steps=4"))
    train.main(base_args(data / "pack", tmp_path, "resumed", *vit, "--max_steps=2"))
    train.main(base_args(data / "pack", tmp_path, "resumed", *vit, "--max_steps=4"))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for part in ("backbone", "head"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key} differs after resume"


# ---------------------------------------------------------------- bad records

def corrupt_copy(source, target):
    import shutil
    shutil.copytree(source, target)
    (target / "id1" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")


@pytest.mark.slow
def test_a_corrupt_image_in_a_folder_is_skipped_warned_once_and_counted(data, tmp_path):
    folder = tmp_path / "images"
    corrupt_copy(data / "images", folder)
    summary = train.main(base_args(folder, tmp_path, "run", "--max_steps=6", "--skip_corrupt=true", "--workers=1"))
    assert summary["steps"] == 6 and summary["skipped_records"] == 1  # seen in two epochs, reported once
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("skipping bad record") == 1 and str(folder / "id1" / "3.jpg") in log
    assert [e["total"] for e in events(tmp_path / "run", "skipped_record")] == [1]
    assert events(tmp_path / "run", "summary")[0]["skipped_records"] == 1


@pytest.mark.slow
def test_without_skip_corrupt_a_bad_record_stops_the_run_in_one_line(data, tmp_path):
    folder = tmp_path / "images"
    corrupt_copy(data / "images", folder)
    result = subprocess_train(base_args(folder, tmp_path, "run", "--max_steps=6", "--workers=1", "--save_freq=1"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {folder / 'id1' / '3.jpg'}, whole file: ") and "skip_corrupt=true" in last
    content = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)  # the last one is intact
    assert content["step"] >= 1


def test_a_scan_finds_the_bad_record_the_duplicate_and_the_empty_identity(data, tmp_path):
    """dataset.check in this process (the tool that prints it is run in the test below)."""
    folder = tmp_path / "images"
    corrupt_copy(data / "images", folder)
    (folder / "id2" / "copy.jpg").write_bytes((folder / "id2" / "0.jpg").read_bytes())
    report = scan_training_source(ImageListDataset(str(folder)), num_classes=5, progress=False)
    assert (report["records"], report["readable"], report["classes"], report["largest_label"]) == (41, 40, 5, 3)
    assert len(report["bad_records"]) == 1 and str(folder / "id1" / "3.jpg") in report["bad_records"][0]
    assert report["duplicate_groups"] == [[str(folder / "id2" / "0.jpg"), str(folder / "id2" / "copy.jpg")]]
    assert report["empty_identities"] == [4] and report["ok"] is False
    clean = scan_training_source(RecordDataset(str(data / "pack")), progress=False)
    assert clean["ok"] and clean["records"] == 60 and clean["classes"] == 6


@pytest.mark.slow
def test_check_data_reports_bad_records_duplicates_and_empty_identities(data, tmp_path):
    folder = tmp_path / "images"
    corrupt_copy(data / "images", folder)
    (folder / "id2" / "copy.jpg").write_bytes((folder / "id2" / "0.jpg").read_bytes())
    (folder / "id9").mkdir()  # an empty identity folder, named by its folder (its label is only its sorted place)
    result = subprocess.run([sys.executable, "tools/data/check_data.py", str(folder), "--json", "--workers", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["empty_identities"] == [4] and report["empty_identity_names"] == [str(folder / "id9")]
    assert report["records"] == 41 and report["readable"] == 40 and len(report["bad_records"]) == 1
    assert str(folder / "id1" / "3.jpg") in report["bad_records"][0]
    assert report["duplicate_groups"] == [[str(folder / "id2" / "0.jpg"), str(folder / "id2" / "copy.jpg")]]
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"id{i // 10}/{i % 10}.jpg {0 if i < 10 else 2}\n" for i in range(20) if i != 13))
    gap = subprocess.run([sys.executable, "tools/data/check_data.py", str(listing), "--root", str(data / "images"),
                          "--json", "--workers", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert gap.returncode == 1 and json.loads(gap.stdout)["empty_identities"] == [1]
    assert json.loads(gap.stdout)["empty_identity_names"] == ["label 1"]  # a list has no folders: the label
    clean = subprocess.run([sys.executable, "tools/data/check_data.py", str(data / "pack")], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0 and clean.stdout.strip().endswith("OK")


# ---------------------------------------------------------------- logs a person can read

def test_log_txt_has_training_lines_and_best_counts_the_evaluation_at_start(data, tmp_path):
    summary = train.main(base_args(data / "pack", tmp_path, "run", "--max_steps=2", "--val_sets=lfw",
                                   "--eval_at_start=true", "--log_freq=2"))
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    training = [line for line in lines if " step 2/2 epoch 0 loss " in line]
    assert len(training) == 1 and "train accuracy" in training[0] and "images/s ETA" in training[0]
    assert summary["best_accuracy"]["lfw"] == max(summary["accuracy_at_start"]["lfw"], summary["accuracy"]["lfw"])
    start_record = events(tmp_path / "run", "val")[0]
    assert start_record["step"] == 0 and start_record["best_accuracy"] == summary["accuracy_at_start"]["lfw"]


@pytest.mark.slow
def test_plot_run_reads_the_first_step_reaching_an_accuracy(data, tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO, "tools", "monitor"))
    import plot_run

    train.main(base_args(data / "pack", tmp_path, "run", "--max_steps=3", "--val_sets=lfw", "--eval_at_start=true",
                         "--test_freq=1"))
    run_dir = str(tmp_path / "run")
    accuracies = [(record["step"], record["accuracy_mean"]) for record in events(run_dir, "val")]
    best = max(accuracy for _, accuracy in accuracies)
    for reach, expected in ((best, next(step for step, accuracy in accuracies if accuracy >= best)), (best + 0.01, None)):
        plot_run.main([run_dir, "--json", "--reach", str(reach), "--out", str(tmp_path / "curves.png")])
        result = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert result["reach"] == reach and result["first_step_reaching"] == expected
    with pytest.raises(SystemExit) as refused:
        plot_run.main([run_dir, "--reach", "0.9"])
    assert refused.value.code == 2 and "give --json too" in capsys.readouterr().err
