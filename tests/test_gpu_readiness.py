"""The CUDA paths' logic, reproduced on the CPU (docs/gpu-readiness.md lists which test covers what):
DDP over gloo runs the logic NCCL runs, GradScaler("cpu") the fp16 skip logic, torch.compile with the
aot_eager backend Dynamo's tracing, and a faked device count the GPU-ordinal check."""

import copy
import dataclasses
import os

import pytest
import torch

from backbone import BACKBONES, backbone_options, build_backbone
from config import load_config
from margin import build_margin
from runtime import UsageError, resolve_device
from training.components import build_optimizer, build_train_state
from training.distributed import DistributedContext
from training.step import TrainStep

NUM_CLASSES = 10


def small_config(*extra):
    return load_config(["--device=cpu", "--precision=fp32", "--backbone=mobilefacenet", "--embedding_size=32",
                        "--batch_size=4", "--workers=0", "--val_sets=", "--visdom=false", "--progress=false",
                        *extra], world_size=1)


def batches(count: int, size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (size, 112, 112, 3), dtype=torch.uint8, generator=generator),
             torch.randint(0, NUM_CLASSES, (size,), generator=generator)) for _ in range(count)]


# ============ 1. DDP: every trainable parameter gets a gradient, or the network says which do not ============

@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_declares_the_parameters_a_training_step_leaves_without_gradient(name):
    """On the meta device (shapes only, no arithmetic): a training forward and backward of every network,
    ViTs with and without masking, against the network's own `unused_in_training()`, which TrainStep
    hands to DDP (find_unused_parameters); an undeclared one hangs DDP's second step."""
    variants = [{"mask_ratio": 0.0}, {}] if "mask_ratio" in backbone_options(name) else [{}]
    for options in variants:
        with torch.device("meta"):
            network = build_backbone(name, 32, **options).train()
            network(torch.randn(2, 3, 112, 112)).sum().backward()
        without = {n for n, p in network.named_parameters() if p.requires_grad and p.grad is None}
        declared = getattr(network, "unused_in_training", lambda: set())()
        assert without == declared, f"{name} {options}: {sorted(without)} get no gradient, declared {sorted(declared)}"


def _vit_ddp_steps(rank, world, init_file, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = small_config("--backbone=vit_t", '--backbone_options={"mask_ratio": 0.0, "drop_path_rate": 0.0}')
    torch.manual_seed(0)
    context = DistributedContext(rank, world)
    state = build_train_state(cfg, context, NUM_CLASSES)
    step = TrainStep(cfg, context, state)
    for images, labels in batches(2):  # the second step is where an undeclared unused parameter fails
        step.set_lr(0.01)
        step(iter([(images[rank * 2:(rank + 1) * 2], labels[rank * 2:(rank + 1) * 2])]))
    torch.save(state.backbone.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_vit_without_masking_trains_under_ddp_and_its_replicas_agree(tmp_path):
    torch.multiprocessing.spawn(_vit_ddp_steps, nprocs=2, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)))
    first, second = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2))
    for key, value in first.items():
        if "running" not in key and value.is_floating_point():
            assert torch.equal(value, second[key]), key


# ============ 2. torch.compile with gradient checkpointing ============

@pytest.mark.slow
@pytest.mark.parametrize("name", ["ir18", "vit_t"])  # the two families that checkpoint (backbone/checkpointing.py)
def test_compiled_checkpointed_training_equals_the_plain_step(name, one_thread):
    options = {"mask_ratio": 0.0, "drop_path_rate": 0.0} if name.startswith("vit") else {}
    torch.manual_seed(0)
    plain = build_backbone(name, 32, **options).train()
    checkpointed = build_backbone(name, 32, grad_checkpoint=True, **options).train()
    checkpointed.load_state_dict(plain.state_dict())
    compiled = torch.compile(checkpointed, backend="aot_eager")
    images = torch.randn(2, 3, 112, 112)
    plain(images).square().sum().backward()
    compiled(images).square().sum().backward()
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=key)
    for (key, a), b in zip(plain.named_buffers(), checkpointed.buffers()):  # BN updated once, not twice
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=key)


# ============ 3. one process per visible GPU ============

def test_a_local_rank_beyond_the_visible_gpus_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=r"LOCAL_RANK=1 needs GPU 1, but torch sees 1 .*--nproc_per_node"):
        resolve_device("auto", local_rank=1)
    with pytest.raises(UsageError, match=r"'cuda:3' needs GPU 3"):
        resolve_device("cuda:3")


# ============ 4. resume across precisions ============

@pytest.mark.parametrize("before, after", [("fp32", "fp16"), ("fp16", "fp32"), ("fp16", "fp16")])
def test_a_checkpoint_resumes_in_another_precision(before, after):
    """`auto` is bf16 on an H100 and fp16 on a V100: a run moved between them changes precision. (fp16
    is refused on the CPU by the config; the state and its GradScaler("cpu") take it here.)"""
    states = []
    for precision in (before, after):
        cfg = dataclasses.replace(small_config(), precision=precision)
        states.append(build_train_state(cfg, DistributedContext(), NUM_CLASSES))
    saved = states[0].state_dict(DistributedContext(), steps_per_epoch=10)
    assert (saved["scaler"] == {}) == (before != "fp16")
    states[1].load_state_dict(saved, DistributedContext())
    assert states[1].scaler.is_enabled() == (after == "fp16")
    if before == after == "fp16":
        assert states[1].scaler.state_dict() == states[0].scaler.state_dict()


# ============ 5. an fp16 overflow skips the whole step ============

@pytest.mark.slow
@pytest.mark.parametrize("optimizer, clip", [("sgd", 0.0), ("adamw", 5.0)])
def test_an_fp16_overflow_changes_no_weight_optimizer_state_or_statistic(optimizer, clip, one_thread):
    cfg = dataclasses.replace(small_config(f"--optimizer={optimizer}", f"--clip_grad_norm={clip}",
                                           "--head=adaface", "--s=64"), precision="fp16")
    torch.manual_seed(0)
    state = build_train_state(cfg, DistributedContext(), NUM_CLASSES)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)  # every gradient overflows fp16
    step = TrainStep(cfg, DistributedContext(), state)
    step.set_lr(0.1)
    before = {name: {k: v.clone() for k, v in module.state_dict().items()}
              for name, module in (("backbone", state.backbone), ("head", state.classifier))}
    optimizers_before = {name: copy.deepcopy(o.state_dict()["state"]) for name, o in state.optimizers.items()}
    result = step(iter(batches(1)))
    assert bool(result.skipped) and bool(result.overflowed) and bool(torch.isfinite(result.loss))
    for name, module in (("backbone", state.backbone), ("head", state.classifier)):
        for key, value in module.state_dict().items():  # weights, BN statistics, AdaFace's norm EMA
            assert torch.equal(value, before[name][key]), f"{name}.{key} changed"
    for name, optimizer_ in state.optimizers.items():  # momentum buffers / AdamW moments and step counts
        for index, entry in optimizer_.state_dict()["state"].items():
            # as before; or, for AdamW, its state created on the first step: zero moments at step 0
            for key, value in entry.items():
                expected = optimizers_before[name].get(index, {}).get(key, torch.zeros_like(value))
                assert torch.equal(value, expected), f"{name} optimizer: parameter {index} {key} changed"
    assert state.scaler.get_scale() == 2.0 ** 99  # the GradScaler saw the overflow and backed off
    state.scaler.update(2.0 ** 8)
    result = step(iter(batches(1, seed=1)))
    assert not bool(result.skipped)
    assert not torch.equal(state.backbone.state_dict()["conv1.conv.weight"], before["backbone"]["conv1.conv.weight"])


def test_a_skipped_first_sgd_step_leaves_clean_momentum():
    """The fused SGD allocates its momentum buffers on its first step and, when that step is skipped
    (found_inf), leaves them uninitialised; they are created as zeros up front instead."""
    weight = torch.nn.Linear(64, 64)
    optimizer = build_optimizer(weight, small_config())
    for parameter in weight.parameters():
        parameter.grad = torch.full_like(parameter, float("inf"))
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    del optimizer.found_inf
    for parameter in weight.parameters():
        assert torch.equal(optimizer.state[parameter]["momentum_buffer"], torch.zeros_like(parameter))


# ============ 6. the head's product in fp32 under autocast ============

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logits_under_autocast_match_fp32_logits(dtype):
    """The same embeddings, with and without autocast: the cosine matrix is an fp32 product either way
    (in bf16 it would be off by ~1e-3, times s = 64)."""
    torch.manual_seed(0)
    head = build_margin("arcface", 512, 1000, s=64.0, m=0.5).train()
    embeddings, labels = torch.randn(64, 512), torch.randint(0, 1000, (64,))
    exact = head(embeddings, labels)
    with torch.autocast("cpu", dtype=dtype):
        mixed = head(embeddings, labels)
    assert mixed.dtype == torch.float32
    assert (mixed - exact).abs().max() < 1e-3


# ============ 8. cuDNN picks its kernels by timing them: training and extraction have fixed shapes ============

def test_a_gpu_process_lets_cudnn_time_its_kernels():
    from runtime import prepare_device
    previous = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        prepare_device(torch.device("cpu"))
        assert not torch.backends.cudnn.benchmark
        prepare_device(torch.device("cuda"))  # sets the flag; nothing runs on the device
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = previous


# ============ 7. a sharded head's checkpoint: assembled on rank 0 alone, read back by rows ============

def _sharded_checkpoint(rank, world, init_file, out_dir):
    import torch.distributed as dist
    from runtime import UsageError as Refused
    from training.checkpoint import agree_on_resume
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    cfg = small_config("--sharded_head=true", "--optimizer=adamw", "--embedding_size=16")
    context = DistributedContext(rank, world)
    torch.manual_seed(0)
    state = build_train_state(cfg, context, NUM_CLASSES)
    step = TrainStep(cfg, context, state)
    images, labels = batches(1)[0]
    step.set_lr(0.01)
    step(iter([(images[rank * 2:(rank + 1) * 2], labels[rank * 2:(rank + 1) * 2])]))
    content = state.state_dict(context, steps_per_epoch=10)
    if rank == 0:
        torch.save({**content, "config": {}}, os.path.join(out_dir, "checkpoint.pt"))
    else:
        assert content is None
    torch.save({"rows": state.classifier.head.weight.detach().clone(),
                "moments": state.optimizers["head"].state[state.classifier.head.weight]["exp_avg"].clone()},
               os.path.join(out_dir, f"rows{rank}.pt"))
    dist.barrier()
    # every rank resumes from the file, mapped: its own rows, and the optimizer state of its own rows
    from training.checkpoint import read_checkpoint
    resumed = build_train_state(cfg, context, NUM_CLASSES)
    resumed.load_state_dict(read_checkpoint(os.path.join(out_dir, "checkpoint.pt")), context)
    mine = torch.load(os.path.join(out_dir, f"rows{rank}.pt"), weights_only=True)
    assert torch.equal(resumed.classifier.head.weight.detach(), mine["rows"])
    assert torch.equal(resumed.optimizers["head"].state[resumed.classifier.head.weight]["exp_avg"], mine["moments"])
    # a rank that finds no checkpoint (a machine without the shared run folder) stops every rank
    try:
        agree_on_resume(5 if rank == 0 else None, "runs/x", context)
        outcome = "went on"
    except Refused as error:
        outcome = str(error)
    with open(os.path.join(out_dir, f"agreement{rank}.txt"), "w") as handle:
        handle.write(outcome)
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_sharded_checkpoint_is_assembled_on_rank_0_and_resumed_by_rows(tmp_path):
    torch.multiprocessing.spawn(_sharded_checkpoint, nprocs=2, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)))
    content = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    rows = [torch.load(tmp_path / f"rows{rank}.pt", weights_only=True) for rank in range(2)]
    assert torch.equal(content["head"]["weight"], torch.cat([r["rows"] for r in rows]))  # class order
    for rank in range(2):
        assert (tmp_path / f"agreement{rank}.txt").read_text() == (
            "the processes disagree about runs/x (rank 0: step 5; rank 1: no checkpoint): every machine must see "
            "the same run folder (a shared file system), or hold a copy of its checkpoint.pt, before the run resumes")


def test_extraction_reads_ahead_in_threads_and_keeps_the_order(tmp_path):
    """The decoding threads that keep a GPU fed: batches come back in order whichever finishes first,
    and the embeddings equal those of the one-thread pipeline."""
    import threading
    import time

    import cv2
    import numpy as np

    from dataset import ImageSequence, read_image_file
    from evaluation.features import extract_embeddings, prefetched_batches

    class SlowFirst:  # the first batch takes longest: a pipeline that yields as threads finish reorders
        def __init__(self, count):
            self.count, self.threads = count, set()

        def __len__(self):
            return self.count

        def __getitem__(self, items):
            self.threads.add(threading.current_thread().name)
            time.sleep(0.05 if items.start == 0 else 0.0)
            return np.stack([np.full((112, 112, 3), i, np.uint8) for i in range(*items.indices(self.count))])

    source = SlowFirst(10)
    batches = list(prefetched_batches(source, 3, workers=3))
    assert [b[:, 0, 0, 0].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert len(source.threads) > 1 and all(name.startswith("decode") for name in source.threads)
    paths = []
    for i in range(9):
        path = tmp_path / f"{i}.jpg"
        cv2.imwrite(str(path), np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8))
        paths.append(str(path))
    images = ImageSequence(paths, read_image_file)
    network = build_backbone("mobilefacenet", 16).eval()
    one = extract_embeddings(network, images, batch_size=2, device="cpu", progress=False, workers=0)
    many = extract_embeddings(network, images, batch_size=2, device="cpu", progress=False, workers=3)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
