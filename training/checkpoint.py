"""A run's checkpoint files: written so that no crash, kill or full disk loses the last good one.

`checkpoint.pt` is the latest TrainState (training/state.py) with the config; `checkpoint.prev.pt` the
one before it, kept as a fallback; `backbone.pt` what the eval scripts load
({"backbone": name, "embedding_size": D, "state_dict": ..., "config": ...}). Each is written by
runtime.artifacts' atomic writer; the latest is renamed to the previous one only after its successor
is safely written. Loading uses torch.load(weights_only=True): a checkpoint can hold no code.
"""

import os

import torch.distributed as dist

from runtime import UsageError
from runtime.artifacts import ArtifactError, atomic_save, backbone_file, load_torch_file

from .state import CHECKPOINT_FORMAT

LATEST, PREVIOUS, BACKBONE = "checkpoint.pt", "checkpoint.prev.pt", "backbone.pt"
REQUIRED_KEYS = ("format", "backbone", "head", "optimizers", "scaler", "rng", "step", "config")


def write_checkpoint(run_dir: str, content: dict, config: dict) -> None:
    atomic_save({**content, "config": config}, os.path.join(run_dir, LATEST),
                keep_previous=os.path.join(run_dir, PREVIOUS))
    atomic_save(backbone_file(config["backbone"], config["embedding_size"], content["backbone"], config),
                os.path.join(run_dir, BACKBONE))


def read_checkpoint(path: str) -> dict:
    """A train.py checkpoint of this format, or ArtifactError naming the file. Its tensors are mapped
    from the file: each rank of a sharded head then reads only its own class rows."""
    content = load_torch_file(path, mmap=True)
    if not isinstance(content, dict) or any(key not in content for key in REQUIRED_KEYS):
        if isinstance(content, dict) and "position" in content and "format" not in content:
            raise ArtifactError(path, "a checkpoint of an earlier version of train.py (no 'format' entry); "
                                        "start afresh, or keep its weights with --init_backbone=<its backbone.pt>")
        raise ArtifactError(path, "not a train.py checkpoint (it lacks "
                                    f"{', '.join(k for k in REQUIRED_KEYS if not isinstance(content, dict) or k not in content)})")
    if content["format"] != CHECKPOINT_FORMAT:
        raise ArtifactError(path, f"checkpoint format {content['format']!r}, this train.py reads {CHECKPOINT_FORMAT}")
    return content


def has_checkpoint(run_dir: str) -> bool:
    """Whether the run folder holds a checkpoint to resume from (the latest or its fallback)."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in (LATEST, PREVIOUS))


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
        except ArtifactError as error:
            if not os.path.exists(previous):
                raise
            note = f"{latest} cannot be read ({error.problem}); resuming from {previous}"
            return read_checkpoint(previous), previous, note
    if os.path.exists(previous):  # a crash between the two renames of write_checkpoint
        return read_checkpoint(previous), previous, f"{latest} is missing; resuming from {previous}"
    return None, None, None


def agree_on_resume(step: int | None, run_dir: str, context) -> None:
    """Every process resumes from the same step, or the run stops here with one line: a machine that
    does not share the run folder finds no checkpoint (or another one) and would start afresh beside
    ranks that resume. `step`: this process's checkpoint step, None without one."""
    if not context.enabled:
        return
    steps = [None] * context.world
    dist.all_gather_object(steps, step)
    if len(set(steps)) > 1:
        found = "; ".join(f"rank {rank}: {'step ' + str(s) if s is not None else 'no checkpoint'}"
                          for rank, s in enumerate(steps))
        raise UsageError(f"the processes disagree about {run_dir} ({found}): every machine must see the same run "
                         "folder (a shared file system), or hold a copy of its checkpoint.pt, before the run resumes")

