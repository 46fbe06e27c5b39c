"""Checkpoints that survive crashes and restore a run exactly.

`checkpoint.pt` holds the backbone, the head (gathered from its shards, so a run resumes on any number
of GPUs), the optimizers (their per-class state gathered likewise), the GradScaler, the position
(global step, epoch, step within the epoch), the RNG states of every rank and the config. It is
written to a temporary file and renamed, so a crash while writing leaves the previous one intact.
`backbone.pt` beside it is what the eval scripts load: {"backbone": name, "embedding_size": D,
"state_dict": ...}. Loading uses torch.load(weights_only=True): a checkpoint can hold no code.
"""

import os

import torch


def atomic_save(obj, path) -> None:
    temporary = f"{path}.tmp{os.getpid()}"
    torch.save(obj, temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load(path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """torch's generators: the only ones training draws from (dropout, head sampling). Shuffling and
    flips are pure functions of (seed, epoch, index) and need no state (dataset/augment.py)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def backbone_file(name: str, embedding_size: int, state_dict: dict, config: dict | None = None) -> dict:
    """The backbone-only checkpoint format every eval script reads."""
    return {"backbone": name, "embedding_size": embedding_size,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "config": config or {}}
