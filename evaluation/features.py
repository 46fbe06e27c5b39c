"""Embeddings of face images, batch by batch: the one feature extractor of train.py and the eval scripts.

Images arrive as uint8 (a numpy array, or any sequence whose slices are uint8 [n,112,112,3] arrays,
such as dataset.ImageSequence); only one batch at a time is ever converted to float, so a 12,000-image
LFW never exists as a float32 copy (insightface's loader keeps two, about 1.8 GB).
"""

import numpy as np
import torch
from tqdm import tqdm

from dataset import normalize_images
from runtime import autocast_context


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
