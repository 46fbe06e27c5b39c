"""Embeddings of face images, batch by batch: the one feature extractor of train.py and the eval scripts.

Images arrive as uint8 (a numpy array, or any sequence whose slices are uint8 [n,112,112,3] arrays,
such as dataset.ImageSequence); only one batch at a time is ever converted to float, so a 12,000-image
LFW never exists as a float32 copy (insightface's loader keeps two, about 1.8 GB).
"""

import collections
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

from dataset import normalize_images
from runtime import autocast_context


def default_decode_workers(device: torch.device) -> int:
    """Threads that read and decode the next batches while the network runs on the current one: on a
    GPU, which would otherwise wait for the decoding, up to 8; on the CPU none (the decoding threads
    would take the cores the network runs on)."""
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0


def prefetched_batches(images, batch_size: int, workers: int):
    """uint8 [n,112,112,3] arrays of images[0:b], images[b:2b], ..., in order. With `workers`, that
    many threads read ahead (OpenCV's decoding releases the GIL, so they decode in parallel), holding
    at most workers + 1 batches."""
    starts = range(0, len(images), batch_size)

    def read(start):
        return np.ascontiguousarray(images[start:start + batch_size])
    if workers <= 0:
        yield from map(read, starts)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending = collections.deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@torch.no_grad()
def extract_embeddings(backbone: torch.nn.Module, images, batch_size: int = 256, device=None,
                       precision: str = "fp32", flip: bool = True, channels_last: bool = False,
                       progress: bool = True, description: str = "features",
                       workers: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(embeddings float32 [N,D], embeddings of the mirrored images or None) in eval mode.

    `workers` decoding threads read ahead (default: default_decode_workers). The backbone's train/eval
    mode is restored afterwards, so train.py can call this mid-run.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    workers = default_decode_workers(device) if workers is None else workers
    was_training = backbone.training
    backbone.eval()
    outputs, flipped_outputs = [], []
    try:
        batches = prefetched_batches(images, batch_size, workers)
        for array in tqdm(batches, total=-(-len(images) // batch_size), desc=description, disable=not progress,
                          unit="batch", leave=False):
            batch = torch.from_numpy(array)
            if device.type == "cuda":  # a page-locked copy goes to the GPU while the host reads on
                batch = batch.pin_memory()
            batch = normalize_images(batch.to(device, non_blocking=True))
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
