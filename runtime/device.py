"""Which device a process computes on, and how it uses the CPU's memory."""

import ctypes
import os

import torch

from .errors import UnknownName, UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto: CUDA (GPU `local_rank`) when torch sees one, else the CPU. Also accepts cuda:N."""
    kind, _, index = str(name).partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise UnknownName("device", name, ("cpu", "cuda", "cuda:N", "auto"))
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r}: torch sees no CUDA device; use cpu or auto")
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    ordinal = int(index) if index else local_rank
    count = torch.cuda.device_count()
    if ordinal >= count:
        which = f"device {name!r}" if index else f"process LOCAL_RANK={local_rank}"
        raise UsageError(f"{which} needs GPU {ordinal}, but torch sees {count} (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start at most {count} process(es) "
                         "per machine (torchrun --nproc_per_node), or use --device=cpu")
    return torch.device("cuda", ordinal)


# glibc's mallopt parameters (malloc.h) and the size up to which freed memory is kept for reuse.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
CPU_HEAP_REUSE_BYTES = 1 << 30


def keep_freed_cpu_memory(device: torch.device) -> bool:
    """Let glibc recycle large freed buffers instead of returning them to the kernel.

    By default every tensor over 32 MB is a fresh mmap whose pages the kernel faults in and zeroes on
    first touch, every batch again (`tools/bench/benchmark.py --default-allocator` measures the cost).
    Process-wide, so each entry point calls it once with its device; a no-op (False) for other
    devices and where the C library is not glibc."""
    if device.type != "cpu":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, CPU_HEAP_REUSE_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, CPU_HEAP_REUSE_BYTES))
    except (OSError, AttributeError):
        return False


def prepare_device(device: torch.device) -> None:
    """How a training or extraction process uses its device, decided here once: on the CPU, freed
    buffers are reused (keep_freed_cpu_memory); on a GPU, cuDNN picks each convolution's kernel by
    timing them on first use, which pays because a run's batch shapes are fixed."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    keep_freed_cpu_memory(device)

