"""train.py end to end on the CPU: exact resume after kill -9, one process vs two (plain and sharded
head), non-finite steps, Visdom curves, and the config loader. Runs are tiny: MobileFaceNet on a
60-image synthetic pack at batch 16, or, where the batch size does not matter, 24 images at batch 8.
train.main runs in this process, on one thread, where a process boundary adds nothing; the run killed
with SIGKILL and the two-process runs (torchrun) are real processes, each on one thread, so that every
run computes with the same kernels."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from config import Config, load_config
from dataset import write_bin, write_record_pack
from dataset.synthetic import SyntheticFaces, make_pairs
from margin import build_margin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ["arcface", "curricularface", "adaface"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    faces = SyntheticFaces(seed=3)
    write_record_pack(folder, ((faces.render(i // 10, i % 10), i // 10) for i in range(60)), num_classes=6)
    images, issame = make_pairs("lfw", 20, first_identity=100, num_identities=10, seed=3)
    write_bin(folder / "lfw.bin", images, issame)
    return folder


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    """24 images of 6 identities: at batch 8, three steps per epoch, as data_dir at batch 16."""
    folder = tmp_path_factory.mktemp("small")
    faces = SyntheticFaces(seed=3)
    write_record_pack(folder, ((faces.render(i // 4, i % 4), i // 4) for i in range(24)), num_classes=6)
    return folder


def train_args(data_dir, out_dir, name, *extra):
    return ["--", f"--train_data={data_dir}", "--val_sets=", "--batch_size=16", "--workers=0",
            f"--output_dir={out_dir}", f"--name={name}", "--visdom=false", "--progress=false",
            "--precision=fp32", "--lr=0.01", "--log_freq=1", "--test_freq=0", "--save_freq=0", *extra]


def train_here(args) -> dict:
    """train.main in this process (a test asks for `one_thread`: the processes below run on one)."""
    import train  # here, not at the top: the spawned workers below import this module
    assert torch.get_num_threads() == 1
    return train.main(args)


def start_train(args, out_file, processes=1):
    """python train.py ARGS (or torchrun with `processes`) in the background, its output to `out_file`;
    one thread per process, as in train_here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "train.py", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "train.py", *args]
    with open(out_file, "w") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def finish(process, out_file):
    """Wait for a start_train process; it must succeed."""
    try:
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    output = open(out_file).read()
    assert process.returncode == 0, output[-6000:]
    return output


def events(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["event"] == kind]


def losses(run_dir):
    return [record["loss"] for record in events(run_dir, "train")]


@pytest.mark.slow
def test_resume_after_kill_matches_an_uninterrupted_run(small_pack, tmp_path, one_thread, capsys):
    # 24 images / batch 8 = 3 steps per epoch: 8 steps cross two epoch boundaries, and the kill
    # lands after the step-4 checkpoint, mid-epoch.
    common = ("--max_steps=8", "--save_freq=4", "--flip=true", "--batch_size=8")
    killed_dir = tmp_path / "killed"
    process = start_train(train_args(small_pack, tmp_path, "killed", *common), tmp_path / "killed.out")
    outcome = {}

    def checkpointed():
        try:
            return (killed_dir / "metrics.jsonl").exists() and bool(events(killed_dir, "checkpoint"))
        except ValueError:  # a line read while it was being written
            return False

    def kill_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while not checkpointed():
            if process.poll() is not None or time.monotonic() > deadline:
                outcome["error"] = "run ended before its first checkpoint"
                process.kill()
                return
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_checkpoint)
    killer.start()
    try:  # the uninterrupted run, here, while the other process trains towards its kill
        train_here(train_args(small_pack, tmp_path, "straight", *common))
    finally:
        killer.join()
        process.wait()
    assert "error" not in outcome, outcome.get("error", "") + open(tmp_path / "killed.out").read()[-3000:]
    assert process.returncode == -signal.SIGKILL
    assert torch.load(killed_dir / "checkpoint.pt", weights_only=True)["position"]["step"] == 4
    capsys.readouterr()
    train_here(train_args(small_pack, tmp_path, "killed", *common))
    resumed = capsys.readouterr()
    assert "resumed from" in resumed.out + resumed.err
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    continued = torch.load(killed_dir / "checkpoint.pt", weights_only=True)
    assert continued["position"] == straight["position"] == {"step": 8, "epoch": 2, "step_in_epoch": 2}
    for part in ("backbone", "head"):
        for key, value in straight[part].items():
            assert torch.equal(value, continued[part][key]), f"{part}.{key} differs after resume"
    assert torch.equal(straight["optimizers"]["backbone"]["state"][0]["momentum_buffer"],
                       continued["optimizers"]["backbone"]["state"][0]["momentum_buffer"])
    assert losses(tmp_path / "straight")[4:] == losses(killed_dir)[-4:]


@pytest.fixture(scope="module")
def sharded_two_steps(data_dir, tmp_path_factory):
    """Two ranks, sharded head, two steps with a checkpoint at step 2: the run that
    test_two_processes_match_one... compares with one process, and the one that
    test_sharded_checkpoint_resumes_on_one_process moves to one process (the same command for both)."""
    out_dir = tmp_path_factory.mktemp("sharded_two_steps")
    process = start_train(train_args(data_dir, out_dir, "moved", "--max_steps=2", "--sharded_head=true",
                                     "--save_freq=2"), out_dir / "torchrun.out", processes=2)
    finish(process, out_dir / "torchrun.out")
    return out_dir / "moved"


@pytest.mark.slow
@pytest.mark.parametrize("sharded", [False, True], ids=["replicated_head", "sharded_head"])
def test_two_processes_match_one_with_the_same_global_batch(data_dir, tmp_path, sharded, one_thread, request):
    # Two ranks x 8 images vs one process with two micro-batches of 8: the same samples meet the same
    # BatchNorm batches. Unsharded, the arithmetic is identical; sharded, the logits are split
    # across ranks, so sums are rounded differently (~1e-7). Training from initialisation amplifies
    # any rounding within a few steps (even a different thread count does), so the sharded run is
    # held to the first two steps and, exactly, by test_sharded_cross_entropy_is_exact below.
    steps = 2 if sharded else 3
    extra = [f"--max_steps={steps}", f"--sharded_head={sharded}"]
    if sharded:
        two_dir = request.getfixturevalue("sharded_two_steps")
        train_here(train_args(data_dir, tmp_path, "one", *extra, "--grad_accum=2"))
    else:
        two_dir = tmp_path / "two"
        process = start_train(train_args(data_dir, tmp_path, "two", *extra), tmp_path / "two.out", processes=2)
        try:  # the one-process run meanwhile
            train_here(train_args(data_dir, tmp_path, "one", *extra, "--grad_accum=2"))
        finally:
            finish(process, tmp_path / "two.out")
    two, one = losses(two_dir), losses(tmp_path / "one")
    assert len(one) == len(two) == steps
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=0)
    if sharded:
        # the checkpoint gathers the head from both shards, in class order
        two_state = torch.load(two_dir / "checkpoint.pt", weights_only=True)
        assert two_state["head"]["weight"].shape == (6, 128)


def _head_factory(name):
    hyper = {"s": 32.0, "m": 0.5} if name != "adaface" else {"s": 32.0, "m": 0.4}
    return lambda classes: build_margin(name, 32, classes, **hyper).double()


def _sharded_gradients(rank, world, init_file, inputs, out_dir):
    """Worker: this rank's share of the sharded head's loss and gradients, in float64, for every head
    (one process group for all of them); written to out_dir for the tests to judge."""
    import torch.distributed as dist
    from training.distributed import DistributedContext, ShardedClassifier
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    embeddings, labels = inputs["embeddings"], inputs["labels"]
    rows = len(labels) // world
    for head in HEADS:
        classifier = ShardedClassifier(_head_factory(head), 10, DistributedContext(rank, world), sharded=True, seed=5)
        local = embeddings[rank * rows:(rank + 1) * rows].clone().requires_grad_()
        loss, _ = classifier(local, labels[rank * rows:(rank + 1) * rows])
        loss.backward()
        torch.save({"loss": loss.detach(), "embedding_grad": local.grad,
                    "weight_grad": classifier.gather_rows(classifier.head.weight.grad)},
                   os.path.join(out_dir, f"{head}_rank{rank}.pt"))
    dist.destroy_process_group()


def _sharded_inputs():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(16, 32, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    return {"embeddings": embeddings, "labels": labels}


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    """Two gloo ranks' losses and gradients for every head, from one pair of spawned processes."""
    folder = tmp_path_factory.mktemp("sharded_ce")
    torch.multiprocessing.spawn(_sharded_gradients, nprocs=2,
                                args=(2, str(folder / "rendezvous"), _sharded_inputs(), str(folder)))
    return folder


@pytest.mark.parametrize("head", HEADS)
def test_sharded_cross_entropy_is_exact(sharded_results, head):
    """Partial FC's all-reduced softmax equals the unsharded cross-entropy and its gradients (float64),
    also for heads whose logits depend on batch statistics or on other columns' targets."""
    from training.distributed import DistributedContext, ShardedClassifier
    inputs = _sharded_inputs()
    embeddings, labels = inputs["embeddings"], inputs["labels"]
    whole = ShardedClassifier(_head_factory(head), 10, DistributedContext(), seed=5)
    leaf = embeddings.clone().requires_grad_()
    loss, _ = whole(leaf, labels)
    loss.backward()
    world = 2
    rows = len(labels) // world
    for rank in range(world):
        shard = torch.load(sharded_results / f"{head}_rank{rank}.pt", weights_only=True)
        # DDP divides the backbone's gradients by the world size: the gather's backward pre-multiplies.
        torch.testing.assert_close(shard["loss"], loss.detach(), rtol=1e-13, atol=0)
        torch.testing.assert_close(shard["embedding_grad"] / world, leaf.grad[rank * rows:(rank + 1) * rows],
                                   rtol=1e-12, atol=1e-15)
        if rank == 0:  # the rows of every shard, assembled on rank 0 (None on the others)
            torch.testing.assert_close(shard["weight_grad"], whole.head.weight.grad, rtol=1e-12, atol=1e-15)
        else:
            assert shard["weight_grad"] is None


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_process(data_dir, tmp_path, sharded_two_steps, one_thread, capsys):
    process = start_train(train_args(data_dir, tmp_path, "two", "--max_steps=3", "--sharded_head=true"),
                          tmp_path / "two.out", processes=2)
    try:  # meanwhile, the two-process run stopped at step 2 goes on for its third step on one process
        shutil.copytree(sharded_two_steps, tmp_path / "moved")  # a copy: the module's run stays as it is
        capsys.readouterr()
        train_here(train_args(data_dir, tmp_path, "moved", "--max_steps=3", "--sharded_head=true",
                              "--grad_accum=2"))
        resumed = capsys.readouterr()
    finally:
        finish(process, tmp_path / "two.out")
    assert "resumed from" in resumed.out + resumed.err
    # Step 3 starts from the same weights and optimizer state on one process as on two.
    np.testing.assert_allclose(losses(tmp_path / "moved")[-1], losses(tmp_path / "two")[-1], rtol=1e-5)


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_advice(small_pack, tmp_path, one_thread, capsys):
    train_here(train_args(small_pack, tmp_path, "run", "--batch_size=8", "--max_steps=2", "--save_freq=2"))
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    capsys.readouterr()
    # A logit scale of 1e38 overflows the gradients: every step is non-finite.
    with pytest.raises(SystemExit) as stopped:  # train.py's exit status
        train_here(train_args(small_pack, tmp_path, "run", "--batch_size=8", "--max_steps=10", "--save_freq=1",
                              "--s=1e38", "--max_nonfinite_steps=3"))
    output = capsys.readouterr()
    assert stopped.value.code == 3
    assert "3 consecutive non-finite steps" in output.out + output.err
    assert "--lr" in output.out + output.err
    # a skipped step is counted like any other (the step alone gives the data position)
    assert [e["step"] for e in events(tmp_path / "run", "nonfinite")] == [3, 4, 5]
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert after["position"]["step"] == 5
    for key, value in after["backbone"].items():
        assert torch.equal(value, before["backbone"][key])
        assert not value.is_floating_point() or bool(torch.isfinite(value).all())


@pytest.mark.slow
def test_training_curves_reach_a_real_visdom_server(small_pack, tmp_path, one_thread):
    from test_visdom import free_port, run_tool, running_server
    import visdom
    if run_tool("--install-only").returncode != 0:
        pytest.skip("Visdom front-end files are not installed (make visdom-assets)")
    port = free_port()
    with running_server(port, tmp_path / "envs"):
        args = train_args(small_pack, tmp_path, "curves", "--batch_size=8", "--max_steps=3", "--visdom=true",
                          f"--visdom_port={port}")
        train_here(args)
        client = visdom.Visdom(port=port, raise_exceptions=True)
        window = json.loads(client.get_window_data("loss", env="curves"))
    trace = window["content"]["data"][0]
    assert trace["x"] == [1, 2, 3]
    np.testing.assert_allclose(trace["y"], losses(tmp_path / "curves"), rtol=1e-6)


def test_no_visdom_server_warns_once_and_trains_on(small_pack, tmp_path, one_thread, capsys):
    from test_visdom import free_port
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning raised is counted, not only the first of its kind
        train_here(train_args(small_pack, tmp_path, "offline", "--batch_size=8", "--max_steps=2", "--visdom=true",
                              f"--visdom_port={free_port()}"))
    printed = capsys.readouterr()
    # what a user sees: the printed output and the warnings (which `python train.py` prints on stderr)
    output = printed.out + printed.err + "".join(str(warning.message) for warning in caught)
    assert output.count("tools/monitor/visdom_server.py") == 1
    assert len(losses(tmp_path / "offline")) == 2


@pytest.mark.slow
def test_evaluation_and_backbone_file_for_the_eval_scripts(data_dir, tmp_path, one_thread):
    summary = train_here(train_args(data_dir, tmp_path, "evaluated", "--max_steps=2", "--val_sets=lfw",
                                    "--eval_at_start=true"))
    summary = json.loads(json.dumps(summary))  # as printed by train.py (its last line of output)
    assert set(summary["accuracy"]) == {"lfw"} and 0 <= summary["accuracy"]["lfw"] <= 1
    assert set(summary["accuracy_at_start"]) == {"lfw"}
    validations = events(tmp_path / "evaluated", "val")
    assert [v["step"] for v in validations] == [0, 2]
    backbone_file = torch.load(tmp_path / "evaluated" / "backbone.pt", weights_only=True)
    assert backbone_file["backbone"] == "mobilefacenet" and backbone_file["embedding_size"] == 128
    assert json.load(open(tmp_path / "evaluated" / "config.json"))["max_steps"] == 2


@pytest.mark.slow
def test_auto_precision_is_recorded_as_the_precision_that_ran(small_pack, tmp_path, one_thread):
    from runtime import resolve_precision
    train_here(train_args(small_pack, tmp_path, "auto", "--batch_size=8", "--max_steps=1", "--precision=auto"))
    ran = resolve_precision("auto", torch.device("cpu"))  # bf16 with oneDNN's bf16 kernels, else fp32
    assert json.load(open(tmp_path / "auto" / "config.json"))["precision"] == ran
    assert f"process(es) on cpu in {ran} |" in (tmp_path / "auto" / "log.txt").read_text()


# ---------------------------------------------------------------- config

def test_config_files_hold_overrides_and_flags_are_type_checked(tmp_path):
    override = tmp_path / "override.py"
    override.write_text("backbone = 'ir50'\nembedding_size = 512\nlr = 1\nmilestones = (4, 8)\n")
    config = load_config([str(override), "--lr=0.05", "--sharded_head", "--val_sets=lfw,cfp_fp",
                          '--head_options={"easy_margin": true}'])
    assert (config.backbone, config.embedding_size, config.lr) == ("ir50", 512, 0.05)
    assert config.sharded_head is True and config.val_sets == ["lfw", "cfp_fp"]
    assert config.milestones == [4.0, 8.0] and config.head_options == {"easy_margin": True}
    assert load_config([str(override)]).lr == 1.0
    assert load_config([]) == Config()


@pytest.mark.parametrize("argv, error, message", [
    (["--learning_rate=0.1"], KeyError, "unknown config key 'learning_rate'; valid: .*backbone"),
    (["--lr=fast"], ValueError, r"--lr='fast': not a valid float"),
    (["--sharded_head=maybe"], ValueError, "not a valid bool"),
    (["--epochs"], ValueError, "give a value as --epochs=VALUE"),
])
def test_bad_overrides_are_refused_with_the_valid_choices(argv, error, message):
    with pytest.raises(error, match=message):
        load_config(argv)


def test_override_file_with_wrong_type_or_unknown_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("epochs = 'many'\n")
    with pytest.raises(TypeError, match=r"bad.py: epochs = 'many' should be int"):
        load_config([str(bad)])
    bad.write_text("epoch = 3\n")
    with pytest.raises(KeyError, match=r"bad.py, line 1: unknown config key 'epoch'; valid: .* \(did you mean"):
        load_config([str(bad)])


def test_every_shipped_config_loads():
    folder = os.path.join(REPO, "configs")
    names = sorted(os.path.relpath(os.path.join(parent, name), folder) for parent, _, files in os.walk(folder)
                   for name in files if name.endswith(".py"))
    assert {"demo.py", "demo_vit.py", "seed/casia_mobilefacenet_arcface.py", "arcface_torch/ms1mv3_r100.py"} <= set(names)
    for name in names:  # the GPU recipes train in fp16, which a CPU refuses: loaded here as on a GPU but for that
        config = load_config([os.path.join(folder, name), "--precision=fp32"])
        assert config.batch_size > 0 and math.isfinite(config.lr)
