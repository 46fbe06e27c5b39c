"""Writing files so that a crash never leaves half of one, and reading checkpoint files safely."""

import os

import numpy as np
import torch

from .errors import DataFormatError


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_torch_file(path, map_location="cpu"):
    """torch.load with weights_only=True (a checkpoint can hold no code); a missing, truncated or
    foreign file is a DataFormatError naming it."""
    if not os.path.isfile(path):
        raise DataFormatError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load raises many types for foreign, truncated or code-holding files
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else ""
        raise DataFormatError(path, f"not a PyTorch checkpoint, or a damaged one ({type(error).__name__}: "
                                    f"{first_line})") from None


def save_npz(path, **arrays) -> None:
    """An .npz under exactly `path` (np.savez would append .npz to other names), written through a
    temporary file; the folder is created if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.partial"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)
