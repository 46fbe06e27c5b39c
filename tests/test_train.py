"""train.py end to end on the CPU: exact resume after kill -9, one process vs two (plain and sharded
head), non-finite steps, Visdom curves, and the config loader. Runs are tiny (MobileFaceNet on a
60-image synthetic pack) and run as a user runs them: `python train.py ...` in a subprocess."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from config import Config, load_config
from dataset import write_bin, write_record_pack
from dataset.synthetic import SyntheticFaces, make_pairs
from margin import build_margin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    faces = SyntheticFaces(seed=3)
    write_record_pack(folder, ((faces.render(i // 10, i % 10), i // 10) for i in range(60)), num_classes=6)
    images, issame = make_pairs("lfw", 20, first_identity=100, num_identities=10, seed=3)
    write_bin(folder / "lfw.bin", images, issame)
    return folder


def train_args(data_dir, out_dir, name, *extra):
    return ["--", f"--train_data={data_dir}", "--val_sets=", "--batch_size=16", "--workers=0",
            f"--output_dir={out_dir}", f"--name={name}", "--visdom=false", "--progress=false",
            "--precision=fp32", "--lr=0.01", "--log_freq=1", "--test_freq=0", "--save_freq=0", *extra]


def run_train(args, processes=1, check=True, **popen):
    """python train.py ARGS (or torchrun with `processes`); one thread per process, so that one
    process and two compute with the same kernels."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        command = [sys.executable, "train.py", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   "train.py", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **popen)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def events(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["event"] == kind]


def losses(run_dir):
    return [record["loss"] for record in events(run_dir, "train")]


def test_resume_after_kill_matches_an_uninterrupted_run(data_dir, tmp_path):
    # 60 images / batch 16 = 3 steps per epoch: 8 steps cross two epoch boundaries, and the kill
    # lands after the step-4 checkpoint, mid-epoch.
    common = ("--max_steps=8", "--save_freq=4", "--flip=true")
    run_train(train_args(data_dir, tmp_path, "straight", *common))
    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "train.py", *train_args(data_dir, tmp_path, "killed", *common)],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed_dir / "metrics.jsonl").exists() or not events(killed_dir, "checkpoint"):
        assert process.poll() is None and time.monotonic() < deadline, "run ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert torch.load(killed_dir / "checkpoint.pt", weights_only=True)["position"]["step"] == 4
    resumed = run_train(train_args(data_dir, tmp_path, "killed", *common))
    assert "resumed from" in resumed.stdout + resumed.stderr
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    continued = torch.load(killed_dir / "checkpoint.pt", weights_only=True)
    assert continued["position"] == straight["position"] == {"step": 8, "epoch": 2, "step_in_epoch": 2}
    for part in ("backbone", "head"):
        for key, value in straight[part].items():
            assert torch.equal(value, continued[part][key]), f"{part}.{key} differs after resume"
    assert torch.equal(straight["optimizers"]["backbone"]["state"][0]["momentum_buffer"],
                       continued["optimizers"]["backbone"]["state"][0]["momentum_buffer"])
    assert losses(tmp_path / "straight")[4:] == losses(killed_dir)[-4:]


@pytest.mark.parametrize("sharded", [False, True], ids=["replicated_head", "sharded_head"])
def test_two_processes_match_one_with_the_same_global_batch(data_dir, tmp_path, sharded):
    # Two ranks x 8 images vs one process with two micro-batches of 8: the same samples meet the same
    # BatchNorm batches. Unsharded, the arithmetic is identical; sharded, the logits are split
    # across ranks, so sums are rounded differently (~1e-7). Training from initialisation amplifies
    # any rounding within a few steps (even a different thread count does), so the sharded run is
    # held to the first two steps and, exactly, by test_sharded_cross_entropy_is_exact below.
    steps = 2 if sharded else 3
    extra = [f"--max_steps={steps}", f"--sharded_head={sharded}"]
    run_train(train_args(data_dir, tmp_path, "two", *extra), processes=2)
    run_train(train_args(data_dir, tmp_path, "one", *extra, "--grad_accum=2"))
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(one) == len(two) == steps
    np.testing.assert_allclose(two, one, rtol=1e-5, atol=0)
    if sharded:
        # the checkpoint gathers the head from both shards, in class order
        two_state = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
        assert two_state["head"]["weight"].shape == (6, 128)


def _head_factory(name):
    hyper = {"s": 32.0, "m": 0.5} if name != "adaface" else {"s": 32.0, "m": 0.4}
    return lambda classes: build_margin(name, 32, classes, **hyper).double()


def _sharded_gradients(rank, world, init_file, reference, head):
    """Worker: this rank's share of the sharded head's loss and gradients, in float64."""
    import torch.distributed as dist
    from training.distributed import DistributedContext, ShardedClassifier
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    embeddings, labels = reference["embeddings"], reference["labels"]
    rows = len(labels) // world
    classifier = ShardedClassifier(_head_factory(head), 10, DistributedContext(rank, world), seed=5)
    local = embeddings[rank * rows:(rank + 1) * rows].clone().requires_grad_()
    loss, _ = classifier(local, labels[rank * rows:(rank + 1) * rows])
    loss.backward()
    # DDP divides the backbone's gradients by the world size: the gather's backward pre-multiplies.
    torch.testing.assert_close(loss.detach(), reference["loss"], rtol=1e-13, atol=0)
    torch.testing.assert_close(local.grad / world, reference["embedding_grad"][rank * rows:(rank + 1) * rows],
                               rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(classifier.gather_rows(classifier.head.weight.grad), reference["weight_grad"],
                               rtol=1e-12, atol=1e-15)
    dist.destroy_process_group()


@pytest.mark.parametrize("head", ["arcface", "curricularface", "adaface"])
def test_sharded_cross_entropy_is_exact(tmp_path, head):
    """Partial FC's all-reduced softmax equals the unsharded cross-entropy and its gradients (float64),
    also for heads whose logits depend on batch statistics or on other columns' targets."""
    from training.distributed import DistributedContext, ShardedClassifier
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(16, 32, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 10, (16,), generator=generator)
    whole = ShardedClassifier(_head_factory(head), 10, DistributedContext(), seed=5)
    leaf = embeddings.clone().requires_grad_()
    loss, _ = whole(leaf, labels)
    loss.backward()
    reference = {"embeddings": embeddings, "labels": labels, "loss": loss.detach(),
                 "embedding_grad": leaf.grad, "weight_grad": whole.head.weight.grad}
    torch.multiprocessing.spawn(_sharded_gradients, args=(2, str(tmp_path / "rendezvous"), reference, head), nprocs=2)


def test_sharded_checkpoint_resumes_on_one_process(data_dir, tmp_path):
    run_train(train_args(data_dir, tmp_path, "two", "--max_steps=3", "--sharded_head=true"), processes=2)
    run_train(train_args(data_dir, tmp_path, "moved", "--max_steps=2", "--sharded_head=true", "--save_freq=2"),
              processes=2)
    resumed = run_train(train_args(data_dir, tmp_path, "moved", "--max_steps=3", "--sharded_head=true",
                                   "--grad_accum=2"))
    assert "resumed from" in resumed.stdout + resumed.stderr
    # Step 3 starts from the same weights and optimizer state on one process as on two.
    np.testing.assert_allclose(losses(tmp_path / "moved")[-1], losses(tmp_path / "two")[-1], rtol=1e-5)


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_advice(data_dir, tmp_path):
    run_train(train_args(data_dir, tmp_path, "run", "--max_steps=2", "--save_freq=2"))
    before = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # A logit scale of 1e38 overflows the gradients: every step is non-finite.
    result = run_train(train_args(data_dir, tmp_path, "run", "--max_steps=10", "--save_freq=1", "--s=1e38",
                                  "--max_nonfinite_steps=3"), check=False)
    assert result.returncode == 3
    assert "3 consecutive non-finite steps" in result.stdout + result.stderr
    assert "--lr" in result.stdout + result.stderr
    # a skipped step is counted like any other (the step alone gives the data position)
    assert [e["step"] for e in events(tmp_path / "run", "nonfinite")] == [3, 4, 5]
    after = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert after["position"]["step"] == 5
    for key, value in after["backbone"].items():
        assert torch.equal(value, before["backbone"][key])
        assert not value.is_floating_point() or bool(torch.isfinite(value).all())


def test_training_curves_reach_a_real_visdom_server(data_dir, tmp_path):
    from test_visdom import free_port, run_tool, running_server
    import visdom
    if run_tool("--install-only").returncode != 0:
        pytest.skip("Visdom front-end files are not installed (make visdom-assets)")
    port = free_port()
    with running_server(port, tmp_path / "envs"):
        args = train_args(data_dir, tmp_path, "curves", "--max_steps=3", "--visdom=true", f"--visdom_port={port}")
        run_train(args)
        client = visdom.Visdom(port=port, raise_exceptions=True)
        window = json.loads(client.get_window_data("loss", env="curves"))
    trace = window["content"]["data"][0]
    assert trace["x"] == [1, 2, 3]
    np.testing.assert_allclose(trace["y"], losses(tmp_path / "curves"), rtol=1e-6)


def test_no_visdom_server_warns_once_and_trains_on(data_dir, tmp_path):
    from test_visdom import free_port
    result = run_train(train_args(data_dir, tmp_path, "offline", "--max_steps=2", "--visdom=true",
                                  f"--visdom_port={free_port()}"))
    output = result.stdout + result.stderr
    assert output.count("tools/visdom_server.py") == 1
    assert len(losses(tmp_path / "offline")) == 2


def test_evaluation_and_backbone_file_for_the_eval_scripts(data_dir, tmp_path):
    result = run_train(train_args(data_dir, tmp_path, "evaluated", "--max_steps=2", "--val_sets=lfw",
                                  "--eval_at_start=true"))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["accuracy"]) == {"lfw"} and 0 <= summary["accuracy"]["lfw"] <= 1
    assert set(summary["accuracy_at_start"]) == {"lfw"}
    validations = events(tmp_path / "evaluated", "val")
    assert [v["step"] for v in validations] == [0, 2]
    backbone_file = torch.load(tmp_path / "evaluated" / "backbone.pt", weights_only=True)
    assert backbone_file["backbone"] == "mobilefacenet" and backbone_file["embedding_size"] == 128
    assert json.load(open(tmp_path / "evaluated" / "config.json"))["max_steps"] == 2


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
    (["--learning_rate=0.1"], KeyError, "unknown config key 'learning_rate'; valid keys: .*backbone"),
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
    with pytest.raises(KeyError, match=r"bad.py: unknown config key 'epoch'"):
        load_config([str(bad)])


def test_every_shipped_config_loads():
    folder = os.path.join(REPO, "configs")
    names = sorted(name for name in os.listdir(folder) if name.endswith(".py"))
    assert {"demo.py", "casia_mobilefacenet_arcface.py", "casia_ir50_arcface.py", "casia_ir_se50_arcface.py",
            "ms1m_ir100_arcface.py"} <= set(names)
    for name in names:
        config = load_config([os.path.join(folder, name)])
        assert config.batch_size > 0 and math.isfinite(config.lr)
