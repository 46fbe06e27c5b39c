"""A run's checkpoint files: written so that no crash, kill or full disk loses the last good one.

`checkpoint.pt` is the latest TrainState (training/state.py) with the config; `checkpoint.prev.pt` the
one before it, kept as a fallback; `backbone.pt` what the eval scripts load
({"backbone": name, "embedding_size": D, "state_dict": ..., "config": ...}). Each is written to a
temporary file, flushed to disk and renamed; the latest is renamed to the previous one only after
its successor is safely written. Loading uses torch.load(weights_only=True): a checkpoint can hold
no code.
"""

import os

import torch

from evaluation.model_loading import backbone_file
from runtime import DataFormatError, atomic_save, load_torch_file

from .state import CHECKPOINT_FORMAT

LATEST, PREVIOUS, BACKBONE = "checkpoint.pt", "checkpoint.prev.pt", "backbone.pt"
REQUIRED_KEYS = ("format", "backbone", "head", "optimizers", "scaler", "rng", "step", "config")


def write_checkpoint(run_dir: str, content: dict, config: dict) -> None:
    latest, previous = os.path.join(run_dir, LATEST), os.path.join(run_dir, PREVIOUS)
    temporary = f"{latest}.tmp{os.getpid()}"
    try:
        torch.save({**content, "config": config}, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        if os.path.exists(latest):
            os.replace(latest, previous)
        os.replace(temporary, latest)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    atomic_save(backbone_file(config["backbone"], config["embedding_size"], content["backbone"], config),
                os.path.join(run_dir, BACKBONE))


def read_checkpoint(path: str) -> dict:
    """A train.py checkpoint of this format, or DataFormatError naming the file."""
    content = load_torch_file(path)
    if not isinstance(content, dict) or any(key not in content for key in REQUIRED_KEYS):
        if isinstance(content, dict) and "position" in content and "format" not in content:
            raise DataFormatError(path, "a checkpoint of an earlier version of train.py (no 'format' entry); "
                                        "start afresh, or keep its weights with --init_backbone=<its backbone.pt>")
        raise DataFormatError(path, "not a train.py checkpoint (it lacks "
                                    f"{', '.join(k for k in REQUIRED_KEYS if not isinstance(content, dict) or k not in content)})")
    if content["format"] != CHECKPOINT_FORMAT:
        raise DataFormatError(path, f"checkpoint format {content['format']!r}, this train.py reads {CHECKPOINT_FORMAT}")
    return content


def find_checkpoint(run_dir: str, explicit: str = "") -> tuple[dict | None, str | None, str | None]:
    """(content, the file it came from, a note) of what a run resumes from: `explicit` (--resume) or the
    run folder's latest checkpoint, falling back to the previous one when the latest cannot be read.
    (None, None, None) when the run folder holds neither."""
    if explicit:
        return read_checkpoint(explicit), explicit, None
    latest, previous = os.path.join(run_dir, LATEST), os.path.join(run_dir, PREVIOUS)
    if os.path.exists(latest):
        try:
            return read_checkpoint(latest), latest, None
        except DataFormatError as error:
            if not os.path.exists(previous):
                raise
            note = f"{latest} cannot be read ({error.problem}); resuming from {previous}"
            return read_checkpoint(previous), previous, note
    if os.path.exists(previous):  # a crash between the two renames of write_checkpoint
        return read_checkpoint(previous), previous, f"{latest} is missing; resuming from {previous}"
    return None, None, None
