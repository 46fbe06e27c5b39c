"""Small numerical helpers every layer uses the same way."""

import contextlib

import numpy as np
import torch


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, as sklearn.preprocessing.normalize computes it (the reference
    protocols use it): rows whose norm is below 10 * eps of their dtype are left unscaled."""
    features = np.asarray(features)
    norms = np.sqrt(np.einsum("ij,ij->i", features, features))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    return features / norms[:, np.newaxis]


@contextlib.contextmanager
def exact_float32_matmul():
    """Within the block, float32 matrix products are computed in float32 (no TF32 on a GPU): protocols
    whose thresholds are order statistics of scores need the same scores on every device."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)

