"""backbone/layers.py's CPU layers, every path they can take, at MobileFaceNet's shapes (batch 64).

    python tools/bench/benchmark_layers.py [--json] [--repeats 5]

Inputs are bf16, channels_last, under CPU autocast, as in train.py's step (and with the recycling
allocator train.py uses); medians over --repeats. Each row times one layer on one shape on every
path backbone.layers.PATH_CHOICES lists for it and says which one `cpu_paths()` takes on this
machine (`chosen`) and which one measured fastest here (`fastest`):
- PReLU: the backward pass alone (input and weight gradients), nn.PReLU against backbone.layers.PReLU
  on each of its paths (`ops`, `fused`: these apply to fp32 steps too);
- BatchNorm then PReLU, forward + backward, on the two stock kernels against the fused one (this
  applies to fp32 steps too);
- pointwise (1x1) conv, strided depthwise conv, global depthwise conv: forward + backward.
The CPU's model and features come first, as tools/bench/benchmark.py reports them, with the default
precision: where it is fp32 (no fast bf16 kernels on this CPU) no training step takes the
convolutions' paths.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from backbone.cpu_choice import layer_for  # noqa: E402
from backbone.layers import PATH_CHOICES, PReLU, cpu_paths, cpu_step_report, forced_cpu_paths  # noqa: E402
from runtime import keep_freed_cpu_memory, positive_int, resolve_precision, run_cli  # noqa: E402
from runtime.cpu import cpu_features  # noqa: E402

PRELU_SHAPES = [(64, 64, 56, 56), (64, 128, 28, 28), (64, 256, 14, 14)]
# (input shape, output channels) of MobileFaceNet's 1x1 stride-1 convs, one of each size.
POINTWISE_SHAPES = [((64, 64, 56, 56), 128), ((64, 128, 28, 28), 64), ((64, 64, 28, 28), 128),
                    ((64, 128, 14, 14), 256), ((64, 256, 14, 14), 128), ((64, 128, 7, 7), 256)]
STRIDED_DEPTHWISE_SHAPES = [(64, 128, 56, 56), (64, 256, 28, 28), (64, 512, 14, 14)]
GLOBAL_DEPTHWISE_SHAPE = (64, 512, 7, 7)


def channels_last_randn(shape, generator):
    return torch.randn(shape, generator=generator).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def backward_ms(layer, shape, repeats, include_forward: bool, paths=None) -> float:
    """Median milliseconds of layer's backward (with its forward if include_forward) on a bf16
    channels_last input under CPU autocast, as in train.py's step, on the forced `paths`."""
    generator = torch.Generator().manual_seed(0)
    x = channels_last_randn(shape, generator).requires_grad_()

    def once() -> float:
        with forced_cpu_paths(**(paths or {})):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = layer(x)
            if not include_forward:
                start = time.perf_counter()
            torch.autograd.grad(out, (x, *layer.parameters()), torch.ones_like(out))
            return time.perf_counter() - start

    once()  # warm-up: oneDNN primitive creation, first touch of the buffers
    return round(1000 * statistics.median(once() for _ in range(repeats)), 2)


def path_row(name, kind, spec, repeats) -> dict:
    """Forward + backward of the layer of `kind` at `spec` (backbone.cpu_choice.layer_for) on every path
    of `kind`, the chosen one and the fastest."""
    layer, shape = layer_for(kind, spec)
    times = {path: backward_ms(layer, shape, repeats, include_forward=True, paths={kind: path})
             for path in PATH_CHOICES[kind]}
    return {"layer": name, "shape": list(shape), "ms": times, "chosen": cpu_paths()[kind],
            "fastest": min(times, key=times.get)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_cpu_memory(torch.device("cpu"))
    rows = []
    for shape in PRELU_SHAPES:
        stock, ours = torch.nn.PReLU(shape[1]), PReLU(shape[1])
        times = {"stock": backward_ms(stock, shape, args.repeats, include_forward=False)}
        times.update({path: backward_ms(ours, shape, args.repeats, include_forward=False,
                                        paths={"prelu_backward": path})
                      for path in PATH_CHOICES["prelu_backward"]})
        rows.append({"layer": "prelu backward", "shape": list(shape), "ms": times,
                     "chosen": cpu_paths()["prelu_backward"], "fastest": min(times, key=times.get)})
    for shape in PRELU_SHAPES:
        rows.append(path_row("batchnorm+prelu forward+backward", "batchnorm_prelu", shape, args.repeats))
    for spec in POINTWISE_SHAPES:
        rows.append(path_row("pointwise conv forward+backward", "pointwise_conv", spec, args.repeats))
    for shape in STRIDED_DEPTHWISE_SHAPES:
        rows.append(path_row("stride-2 depthwise forward+backward", "strided_depthwise_conv", shape, args.repeats))
    rows.append(path_row("global depthwise forward+backward", "global_depthwise_conv", GLOBAL_DEPTHWISE_SHAPE,
                         args.repeats))
    report = {"cpu": cpu_features(), "cpu_paths": cpu_paths(), "torch": torch.__version__,
              "rule_precision": resolve_precision("auto", torch.device("cpu")), "rows": rows}
    if args.json:
        print(json.dumps(report))
        return
    print(cpu_step_report(report["cpu"], report["cpu_paths"], report["rule_precision"]))
    for row in rows:
        times = "  ".join(f"{path} {ms:8.2f}" for path, ms in row["ms"].items())
        print(f"{row['layer']:36s} {str(row['shape']):20s} {times}   ms; chosen {row['chosen']}, fastest {row['fastest']}")


if __name__ == "__main__":
    run_cli(main)
