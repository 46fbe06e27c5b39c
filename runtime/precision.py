"""Reduced precision: one table and one autocast for training, evaluation and the benchmarks."""

import contextlib

import torch

from .errors import UsageError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """A precision the device runs well, or a UsageError saying why not."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        # CPU autocast in float16 has no fast kernels: a step runs orders of magnitude slower than bf16.
        raise UsageError("precision 'fp16' on the CPU is far slower than bf16 (no fast float16 CPU kernels); "
                         "use bf16 or fp32 on the CPU, fp16 on a GPU")


def autocast_context(device: torch.device, precision: str):
    """autocast in bf16/fp16 on CUDA and the CPU; nothing for fp32."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])
