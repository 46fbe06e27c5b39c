"""Embeddings of face images, batch by batch: the one feature extractor of train.py and the eval scripts,
with the precision and CPU-allocator settings that training shares.

Images arrive as uint8 (a numpy array, or any sequence whose slices are uint8 [n,112,112,3] arrays,
such as dataset.EncodedImages); only one batch at a time is ever converted to float, so a 12,000-image
LFW never exists as a float32 copy (insightface's loader keeps two, about 1.8 GB).
"""

import contextlib
import ctypes

import numpy as np
import torch
from tqdm import tqdm

from dataset import normalize_images

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(device: torch.device, precision: str):
    """autocast for bf16/fp16 on CUDA and the CPU; nothing for fp32. (fp16 autocast on the CPU runs
    but is slow; bf16 is the CPU's reduced precision.)"""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


# glibc's mallopt parameters (malloc.h) and the size up to which freed memory is kept for reuse.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
CPU_HEAP_REUSE_BYTES = 1 << 30


def keep_freed_cpu_memory(device: torch.device) -> bool:
    """Let glibc recycle the large activation buffers of CPU training and extraction instead of
    returning them to the kernel. By default every tensor over 32 MB is a fresh mmap whose pages the
    kernel faults in and zeroes on first touch, each batch again: the bf16 MobileFaceNet training
    step ran at 73.6 instead of 92.3 images/s and its feature extraction at 246 instead of 426
    (tools/benchmark.py with and without --default-allocator); peak resident memory did not grow.
    Process-wide, so the entry points (train.py, the eval scripts, the benchmarks) call it with their
    device; a no-op (False) for other devices and where the C library is not glibc."""
    if device.type != "cpu":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, CPU_HEAP_REUSE_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, CPU_HEAP_REUSE_BYTES))
    except (OSError, AttributeError):
        return False


@torch.no_grad()
def extract_embeddings(backbone: torch.nn.Module, images, batch_size: int = 256, device=None,
                       precision: str = "fp32", flip: bool = True, channels_last: bool = False,
                       progress: bool = True, description: str = "features") -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings float32 [N,D], embeddings of the mirrored images or None) in eval mode.

    The backbone's train/eval mode is restored afterwards, so train.py can call this mid-run.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    outputs, flipped_outputs = [], []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc=description, disable=not progress,
                          unit="batch", leave=False):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
            batch = normalize_images(batch)
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with autocast_context(device, precision):
                outputs.append(backbone(batch).float().cpu())
                if flip:
                    flipped_outputs.append(backbone(torch.flip(batch, dims=[3])).float().cpu())
    finally:
        backbone.train(was_training)
    embeddings = torch.cat(outputs).numpy()
    return embeddings, (torch.cat(flipped_outputs).numpy() if flip else None)
