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

from evaluation.model_loading import backbone_file
from runtime import atomic_save


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


def _map_optimizer_state(state: dict, rows) -> dict:
    """An optimizer state_dict with `rows` applied to every tensor of every parameter's state."""
    return {**state, "state": {index: {key: rows(value) if torch.is_tensor(value) else value
                                       for key, value in entry.items()}
                               for index, entry in state["state"].items()}}


def save_run(run_dir, config: dict, context, backbone, classifier, aux_loss, optimizers: dict, scaler,
             position: dict, best_accuracy: dict) -> None:
    """checkpoint.pt and backbone.pt of a run. Every rank takes part (the head's shards and their
    optimizer state are gathered into class order); rank 0 writes."""
    optimizer_states = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        optimizer_states[name] = _map_optimizer_state(state, classifier.gather_rows) if name == "head" else state
    head_state = classifier.full_state()
    rng = [rng_state()]
    if context.enabled:
        rng = [None] * context.world
        torch.distributed.all_gather_object(rng, rng_state())
    if not context.is_main:
        return
    atomic_save({"backbone": backbone.state_dict(), "head": head_state,
                 "aux_loss": aux_loss.state_dict() if aux_loss is not None else None,
                 "optimizers": optimizer_states, "scaler": scaler.state_dict(), "rng": rng,
                 "position": position, "best_accuracy": best_accuracy, "config": config},
                os.path.join(run_dir, "checkpoint.pt"))
    atomic_save(backbone_file(config["backbone"], config["embedding_size"], backbone.state_dict(), config),
                os.path.join(run_dir, "backbone.pt"))


def restore_run(state: dict, context, backbone, classifier, aux_loss, optimizers: dict, scaler) -> tuple[dict, dict]:
    """Load a checkpoint.pt into freshly built modules (any number of processes); returns
    (position, best accuracy per verification set). RNG states come back when the world size is
    unchanged; otherwise each rank keeps its seed (only dropout and class sampling draw from them)."""
    backbone.load_state_dict(state["backbone"])
    classifier.load_full_state(state["head"])
    if aux_loss is not None:
        aux_loss.load_state_dict(state["aux_loss"])
    for name, optimizer in optimizers.items():
        saved = state["optimizers"][name]
        optimizer.load_state_dict(_map_optimizer_state(saved, classifier.local_rows) if name == "head" else saved)
    scaler.load_state_dict(state["scaler"])
    if len(state["rng"]) == context.world:
        set_rng_state(state["rng"][context.rank])
    return state["position"], state["best_accuracy"]
