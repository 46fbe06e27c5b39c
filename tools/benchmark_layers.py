"""backbone/layers.py's CPU layers against torch's stock ones, at MobileFaceNet's shapes (batch 64).

    python tools/benchmark_layers.py [--json]

Inputs are bf16, channels_last, under CPU autocast, as in train.py's step (and with the recycling
allocator train.py uses); medians over --repeats.
PReLU: the backward pass alone (input and weight gradients) of nn.PReLU and backbone.layers.PReLU.
Stride-2 depthwise conv: forward + backward of nn.Conv2d (bf16 under autocast) and of
DepthwiseConv2d (which runs in fp32 there), at MobileFaceNet's three stride-2 depthwise convs.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backbone.layers import DepthwiseConv2d, PReLU  # noqa: E402
from runtime import keep_freed_cpu_memory, positive_int  # noqa: E402

PRELU_SHAPES = [(64, 64, 56, 56), (64, 128, 28, 28), (64, 256, 14, 14)]
STRIDED_DEPTHWISE_SHAPES = [(64, 128, 56, 56), (64, 256, 28, 28), (64, 512, 14, 14)]


def channels_last_randn(shape, generator):
    return torch.randn(shape, generator=generator).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)


def backward_ms(layer, shape, repeats, include_forward: bool) -> float:
    """Median milliseconds of layer's backward (with its forward if include_forward) on a bf16
    channels_last input under CPU autocast, as in train.py's step."""
    generator = torch.Generator().manual_seed(0)
    x = channels_last_randn(shape, generator).requires_grad_()

    def once() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        if not include_forward:
            start = time.perf_counter()
        torch.autograd.grad(out, (x, layer.weight), torch.ones_like(out))
        return time.perf_counter() - start

    once()  # warm-up: oneDNN primitive creation, first touch of the buffers
    return round(1000 * statistics.median(once() for _ in range(repeats)), 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    keep_freed_cpu_memory(torch.device("cpu"))
    rows = []
    for shape in PRELU_SHAPES:
        stock, ours = torch.nn.PReLU(shape[1]), PReLU(shape[1])
        rows.append({"layer": "prelu backward", "shape": list(shape),
                     "stock_ms": backward_ms(stock, shape, args.repeats, include_forward=False),
                     "ours_ms": backward_ms(ours, shape, args.repeats, include_forward=False)})
    for shape in STRIDED_DEPTHWISE_SHAPES:
        options = {"kernel_size": 3, "stride": 2, "padding": 1, "groups": shape[1], "bias": False}
        stock = torch.nn.Conv2d(shape[1], shape[1], **options).to(memory_format=torch.channels_last)
        ours = DepthwiseConv2d(shape[1], shape[1], **options).to(memory_format=torch.channels_last)
        rows.append({"layer": "stride-2 depthwise forward+backward", "shape": list(shape),
                     "stock_ms": backward_ms(stock, shape, args.repeats, include_forward=True),
                     "ours_ms": backward_ms(ours, shape, args.repeats, include_forward=True)})
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}))
    else:
        for row in rows:
            print(f"{row['layer']:38s} {str(row['shape']):20s} stock {row['stock_ms']:8.2f} ms   ours {row['ours_ms']:8.2f} ms")


if __name__ == "__main__":
    main()
