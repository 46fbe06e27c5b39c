"""Reduced precision: one table and one autocast for training, evaluation and the benchmarks.

`auto` (the training default) is, by the rule here, bf16 where the device has fast bf16 kernels, else
the next best: fp16 with a GradScaler on a GPU without bf16 tensor cores, fp32 on a CPU without
oneDNN's bf16 kernels (an AVX2-only CPU runs bf16 autocast many times slower than fp32). On the CPU,
train.py and the benchmarks measure instead (backbone/cpu_choice.py); the rule is what a measurement
falls back to with FACE_CPU_CHOICES=rule and what bounds its candidates.
"""

import contextlib

import torch

from .cpu import has_onednn_bf16
from .errors import UnknownName, UsageError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)


def choose_precision(device_type: str, fast_bf16: bool) -> str:
    """The rule behind `auto`, given whether the device has fast bf16 kernels."""
    if fast_bf16:
        return "bf16"
    return "fp16" if device_type == "cuda" else "fp32"


def has_fast_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and has_onednn_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a name means on the device: `auto` chosen by choose_precision, others as they are."""
    if precision not in PRECISION_CHOICES:
        raise UnknownName("precision", precision, PRECISION_CHOICES)
    return choose_precision(device.type, has_fast_bf16(device)) if precision == "auto" else precision


def check_precision(precision: str, device: torch.device) -> None:
    """A precision the device runs well, or a UsageError saying why not."""
    precision = resolve_precision(precision, device)
    if precision == "fp16" and device.type == "cpu":
        # CPU autocast in float16 has no fast kernels: a step runs orders of magnitude slower than bf16.
        raise UsageError("precision 'fp16' on the CPU has no fast float16 kernels, so a step runs orders of magnitude "
                         "slower; use auto or fp32 on the CPU (bf16 where it has AVX-512 or AMX), fp16 on a GPU")
    if precision == "bf16" and device.type == "cpu" and not has_onednn_bf16():
        raise UsageError(f"precision 'bf16' on this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX-512 or "
                         "AMX) has no fast bfloat16 kernels, so a step runs many times slower than fp32; "
                         "use auto or fp32")


def autocast_context(device: torch.device, precision: str):
    """autocast in bf16/fp16 on CUDA and the CPU; nothing for fp32 (`auto` as resolve_precision says)."""
    dtype = PRECISIONS[resolve_precision(precision, device)]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
