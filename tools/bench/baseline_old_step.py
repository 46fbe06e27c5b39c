"""The old repository's training step, re-stated from its formulas, timed side by side with ours.

    python tools/bench/baseline_old_step.py                  # MobileFaceNet b64, IR-50 b16, ViT-T b32; 10,575 classes
    python tools/bench/baseline_old_step.py --json --compile
    python tools/bench/baseline_old_step.py --rows mobilefacenet:64 --rounds 5   # medians of 5 alternating rounds

The old step (the repository this one succeeds): fp32, NCHW tensors, the backbone, then its
ArcMarginProduct: cos = normalize(x) . normalize(W)^T, sin = sqrt(1 - cos^2),
phi = cos cos(m) - sin sin(m), phi = where(cos > cos(pi - m), phi, cos - sin(pi - m) m), a dense
[B, C] one-hot, logits = s (one_hot phi + (1 - one_hot) cos); cross-entropy; SGD (momentum 0.9,
weight decay 5e-4) on the backbone and the head, with glibc's default allocator. Ours: train.py's
step (training/step.py) with the default settings (precision auto: the faster of fp32 and bf16 autocast
for the network and batch, measured here or read from the cache as train.py does; channels_last, the gather/scatter margin head, the recycling CPU
allocator), and in fp32 for a like-for-like row. On a CPU without fast bf16 the bf16 column is left
out unless --slow-bf16 asks for it (it runs many times slower than fp32 there). One column gives the
old step with our allocator setting alone, to show how much of the gain that is. The same network
definitions are used for both, except that the old step gets torch's stock nn.PReLU and nn.Conv2d
where ours has backbone/layers.py's faster-on-the-CPU equivalents (the same parameters and outputs),
so the ratio measures the step, not a different architecture. Each figure comes from its own process.
The report starts with the CPU's model and features (runtime.cpu.cpu_features: AMX, AVX-512 BF16,
torch's capability, oneDNN's version, threads), the rule's precision, and the per-layer paths our
bf16 step takes on it (backbone.layers.cpu_paths), since the ratio depends on all of them.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from backbone import BACKBONES, build_backbone, default_embedding_size  # noqa: E402
from backbone.cpu_choice import layer_choice_lines, measured_precision  # noqa: E402
from backbone.layers import DepthwiseConv2d, PointwiseConv2d, PReLU, cpu_paths, cpu_step_report  # noqa: E402
from config import Config  # noqa: E402
from runtime import keep_freed_cpu_memory, measured, positive_int, resolve_precision, run_cli  # noqa: E402
from runtime.cpu import cpu_features  # noqa: E402
from training.components import build_train_state  # noqa: E402
from training.distributed import DistributedContext  # noqa: E402
from training.step import TrainStep  # noqa: E402


class OldArcMarginProduct(torch.nn.Module):
    def __init__(self, embedding_size, num_classes, s=32.0, m=0.5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(num_classes, embedding_size))
        torch.nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def forward(self, x, label):
        cos = F.linear(F.normalize(x), F.normalize(self.weight))
        sin = torch.sqrt((1.0 - cos * cos).clamp(0, 1))
        phi = cos * math.cos(self.m) - sin * math.sin(self.m)
        phi = torch.where(cos - math.cos(math.pi - self.m) > 0, phi, cos - math.sin(math.pi - self.m) * self.m)
        one_hot = torch.zeros_like(cos).scatter_(1, label.view(-1, 1), 1.0)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cos)


def with_stock_layers(model: torch.nn.Module) -> torch.nn.Module:
    """Our PReLU, DepthwiseConv2d and PointwiseConv2d only override forward(), so setting their class
    back to torch's gives exactly the layers the old repository used."""
    for module in model.modules():
        if isinstance(module, PReLU):
            module.__class__ = torch.nn.PReLU
        elif isinstance(module, (DepthwiseConv2d, PointwiseConv2d)):
            module.__class__ = torch.nn.Conv2d
    return model


def old_step_rate(backbone_name, embedding_size, batch_size, num_classes, steps, warmup) -> float:
    backbone = with_stock_layers(build_backbone(backbone_name, embedding_size))
    head = OldArcMarginProduct(embedding_size, num_classes)
    optimizer = torch.optim.SGD([{"params": backbone.parameters()}, {"params": head.parameters()}],
                                lr=0.1, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)

    def step():
        inputs = (images.float() - 127.5) / 127.5
        loss = F.cross_entropy(head(backbone(inputs), labels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed(step, steps, warmup) * batch_size


def our_step_rate(backbone_name, embedding_size, batch_size, num_classes, steps, warmup, precision, compile) -> float:
    cfg = Config(backbone=backbone_name, embedding_size=embedding_size, batch_size=batch_size, precision=precision,
                 compile=compile, s=32.0, m=0.5)
    context = DistributedContext()
    state = build_train_state(cfg, context, num_classes)
    train_step = TrainStep(cfg, context, state)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 256, (batch_size, 3, 112, 112), dtype=torch.uint8, generator=generator),
             torch.randint(0, num_classes, (batch_size,), generator=generator))

    def forever():
        while True:
            yield batch

    batches = forever()
    return timed(lambda: train_step(batches), steps, warmup) * batch_size


def timed(step, steps, warmup) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


# Column -> how its process measures: which step (the old one, or ours at a precision), whether glibc
# recycles freed memory (train.py does on the CPU; the old repository did not), and torch.compile.
VARIANTS = {"old_fp32": ("old", False, False), "old_fp32_recycling_allocator": ("old", True, False),
            "ours_fp32": ("fp32", True, False), "ours_bf16": ("bf16", True, False),
            "ours_fp32_compile": ("fp32", True, True), "ours_bf16_compile": ("bf16", True, True)}


def chosen_variants(default_precision: str, compile: bool, slow_bf16: bool) -> list[str]:
    """The columns of a run: the old step with and without our allocator, ours in fp32, ours in bf16
    where bf16 is the default (fast bf16 kernels) or asked for, and ours compiled at the default."""
    variants = ["old_fp32", "old_fp32_recycling_allocator", "ours_fp32"]
    if default_precision == "bf16" or slow_bf16:
        variants.append("ours_bf16")
    if compile:
        variants.append(f"ours_{default_precision}_compile")
    return variants


def measure(variant, backbone, batch, args) -> float:
    """images/s of one variant, in the current (fresh) process."""
    embedding = default_embedding_size(backbone)
    step, recycle, compile = VARIANTS[variant]
    if recycle:
        keep_freed_cpu_memory(torch.device("cpu"))
    if step == "old":
        return old_step_rate(backbone, embedding, batch, args.num_classes, args.steps, args.warmup)
    return our_step_rate(backbone, embedding, batch, args.num_classes, args.steps, args.warmup, step, compile)


def measure_in_fresh_process(variant, backbone, batch, args) -> float:
    """Each measurement gets its own interpreter: the allocator setting is process-wide, and heap
    state left by one step must not slow or speed up the next one."""
    command = [sys.executable, os.path.abspath(__file__), "--measure", variant, "--rows", f"{backbone}:{batch}",
               "--num-classes", str(args.num_classes), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{variant} on {backbone}:{batch} failed:\n{result.stderr[-3000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def parse_row(parser, item: str) -> tuple[str, int]:
    """'backbone:batch' -> (backbone, batch), or a usage error naming the item."""
    name, _, batch = item.partition(":")
    if name not in BACKBONES or not batch.isdigit() or int(batch) < 1:
        parser.error(f"--rows item {item!r}: expected BACKBONE:BATCH with a positive batch; backbones: "
                     f"{', '.join(sorted(BACKBONES))}")
    return name, int(batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="mobilefacenet:64,ir50:16,vit_t:32",
                        help="backbone:batch pairs to compare (embedding 128 for mobilefacenet, else 512)")
    parser.add_argument("--num-classes", type=positive_int, default=10575)
    parser.add_argument("--steps", type=positive_int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="measure every column this many times, the columns in turn each round; each figure "
                             "is then the median over rounds, each speedup the median of the rounds' ratios")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    parser.add_argument("--slow-bf16", action="store_true",
                        help="also time ours in bf16 on a CPU without fast bf16 kernels, where the default is fp32")
    parser.add_argument("--measure", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # one variant, in this process
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: must be 0 or more")
    rows = [parse_row(parser, item) for item in args.rows.split(",")]
    if args.measure:
        print(measure(args.measure, *rows[0], args))
        return
    cpu, paths = cpu_features(), cpu_paths()
    if not args.json:
        print(cpu_step_report(cpu, paths, resolve_precision("auto", torch.device("cpu"))), flush=True)
        print("\n".join(f"cpu choice: {line}" for line in layer_choice_lines()), flush=True)
    table = []
    for name, batch in rows:
        # `auto` as train.py resolves it for this network and batch: measured here, or cached.
        choice = measured_precision(name, default_embedding_size(name), batch)
        row = {"backbone": name, "batch_size": batch, "default_precision": choice["choice"]}
        if not args.json:
            print(f"cpu choice: {measured.describe(choice['family'], choice)}", flush=True)
        variants = chosen_variants(choice["choice"], args.compile, args.slow_bf16)
        # Rounds: the machine's speed drifts between processes, so the old step and ours are timed in
        # turn, and a ratio is taken within a round before the median over rounds.
        rounds = [{variant: measure_in_fresh_process(variant, name, batch, args) for variant in variants}
                  for _ in range(args.rounds)]
        for variant in variants:
            row[variant] = round(statistics.median(figures[variant] for figures in rounds), 2)
            if variant != "old_fp32":
                row[f"{variant}_speedup"] = round(statistics.median(figures[variant] / figures["old_fp32"]
                                                                    for figures in rounds), 2)
        if args.rounds > 1:
            row["rounds"] = [{variant: round(figure, 2) for variant, figure in figures.items()} for figures in rounds]
        row["default_speedup"] = row[f"ours_{choice['choice']}_speedup"]
        table.append(row)
        if not args.json:
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu,
                          "cpu_paths": paths, "cpu_choices": [measured.describe(f, r) for f, r in measured.decided().items()],
                          "rows": table}))


if __name__ == "__main__":
    run_cli(main)
