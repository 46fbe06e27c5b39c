"""Training-step and evaluation throughput, measured with train.py's own step (training/step.py).

    python tools/bench/benchmark.py --backbone ir50 --head arcface --batch-size 512 --num-classes 10575 \\
        --device cuda --dtype bf16 --json
    python tools/bench/benchmark.py --backbone mobilefacenet --batch-size 64 --device cpu
    python tools/bench/benchmark.py --backbone ir50 --device cuda --loader rec:data/faces_webface_112x112
    python tools/bench/benchmark.py --backbone ir100 --num-classes 1000000 --sharded-head --sample-rate 0.3
    python tools/bench/benchmark.py --backbone vit_b --batch-size 8 --device cpu --grad-checkpoint

Training: images/s of full optimizer steps (forward, margin head, cross-entropy, backward, SGD) with a
batch already on the device, or, with --loader rec:PATH, fed by the real DataLoader from a .rec pack.
FLOP/s count 3 x 2 x MACs per image (forward, and a backward of twice the forward), MACs counted by
walking the backbone, plus the head's 3 x 2 x B x C x D. --eval also times feature extraction, the
verification protocols (6,000 pairs) and a MegaFace search with random features.
On the CPU the allocator recycles freed memory as in train.py (--default-allocator turns that off, for
the A/B) and max_rss_gb is the process's peak resident memory; on CUDA max_memory_gb is torch's peak
(torch.cuda.max_memory_allocated). --grad-checkpoint recomputes the backbone's activations in the
backward pass (IR nets, ViTs): run it and the plain step as separate processes to compare the peaks.
Every result names the CPU's model and features (runtime.cpu.cpu_features: AMX, AVX-512 BF16, AVX-512,
torch's capability, oneDNN's version, threads) and the per-layer paths of backbone.layers.cpu_paths
that a CPU step takes on it. With --dtype auto on the CPU (the default, as train.py's), the precision
and the layer paths are chosen by measuring them here, or read from the cache of an earlier
measurement (backbone/cpu_choice.py); `cpu_choices` says what was chosen and the times that chose it.
--profile N runs N more steps under torch.profiler and lists the ops that take the step's time.
--csv FILE appends the result as a row (to a file with the same columns); --json prints one JSON object.
"""

import argparse
import csv
import dataclasses
import json
import os
import resource
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from backbone import BACKBONES, backbone_options, default_embedding_size  # noqa: E402
from backbone.complexity import count_macs  # noqa: E402
from backbone.cpu_choice import layer_choice_lines, measured_precision  # noqa: E402
from backbone.layers import FP32_KINDS, PATH_CHOICES, cpu_paths, forced_cpu_paths  # noqa: E402
from config import Config, validate  # noqa: E402
from runtime import (PRECISION_CHOICES, UnknownName, check_writable, keep_freed_cpu_memory, measured,  # noqa: E402
                     positive_int, resolve_precision, run_cli)
from runtime.cpu import cpu_features  # noqa: E402
from training.components import backbone_build_options, build_model, build_train_state  # noqa: E402
from training.distributed import DistributedContext  # noqa: E402
from training.step import TrainStep  # noqa: E402

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) of the devices we quote fractions for.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_batches(batch_size: int, num_classes: int, device):
    """The same random uint8 batch forever, already on the device (the input path is not timed)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    while True:
        yield images, labels


def loader_batches(pack: str, cfg: Config, device):
    from dataset import RecordDataset, TrainingView
    from training.sampler import StepBatchSampler
    dataset = RecordDataset(pack)
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, seed=0)
    loader = torch.utils.data.DataLoader(TrainingView(dataset, flip=True), batch_sampler=sampler,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=cfg.workers > 0, prefetch_factor=4 if cfg.workers else None)
    while True:
        for epoch in range(1 << 30):
            sampler.set_position(epoch)
            yield from loader


def profile_steps(step, batches, steps: int, top: int = 12) -> list:
    """[(op, ms per step, share of the step's self time)] of the `top` ops by self time over `steps`
    more steps, from torch.profiler: where a step's time goes."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for _ in range(steps):
            step(batches)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events) or 1.0
    ranked = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:top]
    return [(event.key, round(event.self_cpu_time_total / 1000 / steps, 2), round(event.self_cpu_time_total / total, 3))
            for event in ranked]


def time_training(cfg: Config, device, num_classes: int, steps: int, warmup: int, pack: str | None,
                  sync_each_step: bool = False, profile: int = 0) -> dict:
    context = DistributedContext(device=device)
    state = build_train_state(cfg, context, num_classes)
    backbone = state.backbone
    step = TrainStep(cfg, context, state)
    batches = loader_batches(pack, cfg, device) if pack else resident_batches(cfg.batch_size, num_classes, device)
    for _ in range(warmup):
        step(batches)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        result = step(batches)
        if sync_each_step:  # what the loop did before it kept the results on the device: read them every step
            result.loss.item(), result.accuracy.item(), result.grad_norm.item(), result.skipped.item()
    synchronize(device)
    seconds = time.perf_counter() - start
    images_per_second = steps * cfg.batch_size / seconds
    macs = count_macs(backbone)
    flops_per_image = 6 * macs + 6 * num_classes * cfg.embedding_size
    result = {"images_per_second": round(images_per_second, 1), "step_ms": round(1000 * seconds / steps, 2),
              "gmacs_per_image": round(macs / 1e9, 3),
              "tflops": round(images_per_second * flops_per_image / 1e12, 3)}
    peak = device_peak(device)
    if peak:
        result["peak_fraction"] = round(result["tflops"] / peak, 3)
    if device.type == "cuda":
        result["max_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    elif sys.platform.startswith("linux"):  # the process's peak resident memory so far (ru_maxrss is in KiB)
        result["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if profile:
        result["profile"] = profile_steps(step, batches, profile)
    return result


def time_evaluation(cfg: Config, device, megaface_distractors: int) -> dict:
    from evaluation.features import extract_embeddings
    from evaluation.megaface import evaluate_megaface
    from evaluation.verification import evaluate_verification
    context = DistributedContext(device=device)
    backbone, _, _ = build_model(cfg, context, num_classes=2)
    images = np.random.default_rng(0).integers(0, 256, (2048, 112, 112, 3), dtype=np.uint8)
    start = time.perf_counter()
    extract_embeddings(backbone, images, batch_size=256, device=device, precision=cfg.precision,
                       channels_last=cfg.channels_last, progress=False)
    synchronize(device)
    extraction = len(images) * 2 / (time.perf_counter() - start)  # each image and its mirror
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((12000, 512)).astype(np.float32)
    issame = np.tile(np.repeat([True, False], 300), 10)
    timings = {"extraction_images_per_second": round(extraction, 1)}
    for protocol in ("insightface", "seed"):
        start = time.perf_counter()
        evaluate_verification(embeddings, issame, embeddings, protocol=protocol)
        timings[f"verification_{protocol}_ms"] = round(1000 * (time.perf_counter() - start), 1)
    probes = rng.standard_normal((3530, 512)).astype(np.float32)
    labels = np.repeat(np.arange(80), 45)[:3530]
    distractors = rng.standard_normal((megaface_distractors, 512)).astype(np.float32)
    start = time.perf_counter()
    evaluate_megaface(probes, labels, distractors, device=str(device))
    timings[f"megaface_{megaface_distractors}_seconds"] = round(time.perf_counter() - start, 2)
    return timings


def parse_cpu_paths(parser, text: str) -> dict[str, str]:
    """--cpu-paths KIND=PATH,... as {kind: path}, each checked against backbone.layers.PATH_CHOICES."""
    paths = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, path = item.partition("=")
        if kind not in PATH_CHOICES:
            parser.error(str(UnknownName("layer kind", kind, PATH_CHOICES, where=f"--cpu-paths item {item!r}")))
        if path not in PATH_CHOICES[kind]:
            parser.error(str(UnknownName(f"{kind} path", path, PATH_CHOICES[kind], where=f"--cpu-paths item {item!r}")))
        paths[kind] = path
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilefacenet")
    parser.add_argument("--embedding-size", type=positive_int, default=None,
                        help="default: 128 for mobilefacenet, else 512")
    parser.add_argument("--head", default="arcface")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--num-classes", type=positive_int, default=10575)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cuda", "cpu"))
    parser.add_argument("--dtype", default="auto", choices=PRECISION_CHOICES,
                        help="autocast precision; auto as train.py's default (on a GPU bf16 where it has fast bf16 "
                             "kernels, else fp16; on the CPU the faster of fp32 and bf16, measured here)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--grad-checkpoint", action="store_true",
                        help="gradient checkpointing of the backbone (IR nets and ViTs)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--sharded-head", action="store_true", help="the Partial FC classifier (one process here)")
    parser.add_argument("--sample-rate", type=float, default=1.0)
    parser.add_argument("--loader", help="rec:PATH to feed steps from a .rec pack through the real DataLoader")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steps", type=positive_int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--default-allocator", action="store_true",
                        help="on the CPU, leave glibc's allocator as it is (train.py makes it recycle freed memory)")
    parser.add_argument("--cpu-paths", default="", metavar="KIND=PATH,...",
                        help="force backbone.layers' CPU paths (e.g. global_depthwise_conv=fp32) to time one against "
                             "another; kinds and paths: " + "; ".join(f"{k}: {'/'.join(v)}" for k, v in PATH_CHOICES.items()))
    parser.add_argument("--sync-each-step", action="store_true",
                        help="read the step's loss, accuracy, norm and verdict back every step (train.py reads them "
                             "at its log points only): the cost of waiting for the device")
    parser.add_argument("--eval", action="store_true", help="also time extraction, verification, MegaFace")
    parser.add_argument("--megaface-distractors", type=positive_int, default=100_000)
    parser.add_argument("--csv", help="append the result to this CSV file (e.g. result/benchmark.csv)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="after the timing, N more steps under torch.profiler: the ops that take the step's time")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.loader and not args.loader.startswith("rec:"):
        parser.error(f"--loader {args.loader!r}: expected rec:PATH")
    for flag, value in (("--warmup", args.warmup), ("--threads", args.threads), ("--workers", args.workers),
                        ("--profile", args.profile)):
        if value < 0:
            parser.error(f"{flag} {value}: must be 0 or more")
    if args.csv:
        check_writable(args.csv, "--csv", instead="choose a file in a folder you can write")
    if args.loader:
        from dataset import RecordDataset
        RecordDataset(args.loader[4:])  # opened (and checked) before anything is built
    if args.grad_checkpoint and "grad_checkpoint" not in backbone_options(args.backbone):
        supported = ", ".join(name for name in BACKBONES if "grad_checkpoint" in backbone_options(name))
        parser.error(f"--grad-checkpoint: backbone {args.backbone!r} has none; valid: {supported}")
    forced_paths = parse_cpu_paths(parser, args.cpu_paths)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    recycling_allocator = not args.default_allocator and keep_freed_cpu_memory(device)
    embedding_size = args.embedding_size or default_embedding_size(args.backbone)
    cfg = Config(backbone=args.backbone, embedding_size=embedding_size, head=args.head, s=64.0, m=0.5,
                 batch_size=args.batch_size, precision=args.dtype, compile=args.compile,
                 grad_checkpoint=args.grad_checkpoint,
                 channels_last=not args.no_channels_last, sharded_head=args.sharded_head,
                 sample_rate=args.sample_rate, workers=args.workers, device=args.device)
    # the config's own checks, each option named as given here
    validate(cfg, {"backbone": f"--backbone {args.backbone}", "embedding_size": f"--embedding-size {embedding_size}",
                   "head": f"--head {args.head}", "batch_size": f"--batch-size {args.batch_size}",
                   "sample_rate": f"--sample-rate {args.sample_rate}", "workers": f"--workers {args.workers}",
                   "precision": f"--dtype {args.dtype}", "device": f"--device {args.device}"}, world_size=1)
    choices = []
    if args.dtype == "auto" and device.type == "cpu":  # as train.py chooses: measured here, or cached
        record = measured_precision(cfg.backbone, cfg.embedding_size, cfg.batch_size, backbone_build_options(cfg))
        precision, choices = record["choice"], [measured.describe(record["family"], record), *layer_choice_lines()]
    else:
        precision = resolve_precision(args.dtype, device)
    cfg = dataclasses.replace(cfg, precision=precision)
    # The PReLU and BatchNorm paths apply to any CPU step; the convolutions' paths to CPU steps in bf16.
    bf16_only = sorted(kind for kind in forced_paths if kind not in FP32_KINDS)
    if forced_paths and (device.type != "cpu" or (bf16_only and precision != "bf16")):
        parser.error(f"--cpu-paths: {', '.join(bf16_only or forced_paths)} apply to a CPU step"
                     f"{' in bf16' if bf16_only else ''}, and this one runs in {precision} on {device.type} "
                     f"(--dtype {args.dtype}); give --device cpu{' --dtype bf16' if bf16_only else ''}")
    result = {"backbone": args.backbone, "head": args.head, "batch_size": args.batch_size,
              "num_classes": args.num_classes, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
              else f"cpu x{torch.get_num_threads()}", "dtype": precision, "compile": args.compile,
              "grad_checkpoint": args.grad_checkpoint,
              "channels_last": cfg.channels_last, "sharded_head": args.sharded_head, "sample_rate": args.sample_rate,
              "loader": args.loader or "device-resident", "recycling_allocator": recycling_allocator,
              "torch": torch.__version__, **cpu_features(),
              "cpu_choices": "; ".join(choices) or "none measured (--dtype given, or not a CPU)"}
    with forced_cpu_paths(**forced_paths):
        result["cpu_paths"] = ";".join(f"{kind}={path}" for kind, path in cpu_paths().items())
        result.update(time_training(cfg, device, args.num_classes, args.steps, args.warmup,
                                    args.loader[4:] if args.loader else None, args.sync_each_step, args.profile))
        result["sync_each_step"] = args.sync_each_step
    if args.eval:
        result.update(time_evaluation(cfg, device, args.megaface_distractors))
    # Printed first, so that a refused CSV loses no figures.
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if key == "profile":
                print("profile (op, ms per step, share of the step):")
                print("\n".join(f"  {name:48s} {ms:9.2f} {share:6.1%}" for name, ms, share in value))
            else:
                print(f"{key:32s} {value}")
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        new = not os.path.exists(args.csv) or os.path.getsize(args.csv) == 0
        if not new:
            with open(args.csv, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            if header != list(result):
                parser.error(f"--csv {args.csv}: its columns ({','.join(header)}) differ from this result's "
                             f"({','.join(result)}); give a new file")
        with open(args.csv, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(result))
            if new:
                writer.writeheader()
            writer.writerow(result)


if __name__ == "__main__":
    run_cli(main)
