"""Everything a run trains, and where it is: one object whose state_dict is the checkpoint."""

from dataclasses import dataclass, field

import torch

CHECKPOINT_FORMAT = 2  # a checkpoint's layout version; older checkpoints are refused with a message


def rng_state() -> dict:
    """torch's generators: the only ones training draws from (dropout, masking, head sampling).
    Shuffling and flips are pure functions of (seed, epoch, index) and need no state."""
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


@dataclass
class TrainState:
    """The modules, optimizers and GradScaler of a run, and its position.

    `step` counts optimizer steps taken, a skipped non-finite step included, so that it alone gives
    the epoch and the batch within it (the sampler's batches are a function of (seed, epoch, step)).
    """

    backbone: torch.nn.Module
    classifier: torch.nn.Module  # training.distributed.ShardedClassifier
    aux_loss: torch.nn.Module | None
    optimizers: dict
    scaler: torch.amp.GradScaler
    step: int = 0
    best_accuracy: dict = field(default_factory=dict)  # verification set -> best accuracy of any evaluation
    bad_records: list = field(default_factory=list)  # the distinct records skipped so far (skip_corrupt)

    def state_dict(self, context, steps_per_epoch: int) -> dict | None:
        """The checkpoint content, on the main process (None elsewhere). Every process must call it:
        the head's shards and their optimizer state are sent to rank 0 and laid out in class order
        there, so that the checkpoint resumes on any number of processes."""
        optimizers = {name: _map_optimizer_state(optimizer.state_dict(), self.classifier.gather_rows)
                      if name == "head" else optimizer.state_dict() for name, optimizer in self.optimizers.items()}
        head = self.classifier.full_state()
        rng = [rng_state()]
        if context.enabled:
            rng = [None] * context.world
            torch.distributed.all_gather_object(rng, rng_state())
        if not context.is_main:
            return None
        epoch, step_in_epoch = divmod(self.step, steps_per_epoch)
        return {"format": CHECKPOINT_FORMAT, "backbone": self.backbone.state_dict(), "head": head,
                "aux_loss": self.aux_loss.state_dict() if self.aux_loss is not None else None,
                "optimizers": optimizers, "scaler": self.scaler.state_dict(), "rng": rng, "step": self.step,
                "position": {"step": self.step, "epoch": epoch, "step_in_epoch": step_in_epoch},
                "best_accuracy": dict(self.best_accuracy), "bad_records": list(self.bad_records)}

    def load_state_dict(self, content: dict, context) -> None:
        """Load a checkpoint into freshly built modules (any number of processes). RNG states come back
        when the world size is unchanged; otherwise each process keeps its seed."""
        self.backbone.load_state_dict(content["backbone"])
        self.classifier.load_full_state(content["head"])
        if self.aux_loss is not None:
            self.aux_loss.load_state_dict(content["aux_loss"])
        for name, optimizer in self.optimizers.items():
            saved = content["optimizers"][name]
            optimizer.load_state_dict(_map_optimizer_state(saved, self.classifier.local_rows)
                                      if name == "head" else saved)
        # A GradScaler saves {} when it is off (bf16 / fp32). A run resumed into another precision (`auto`
        # resolves per device: bf16 on an H100, fp16 on a V100) starts the scaler afresh, or leaves it off.
        if self.scaler.is_enabled() and content["scaler"]:
            self.scaler.load_state_dict(content["scaler"])
        if len(content["rng"]) == context.world:
            set_rng_state(content["rng"][context.rank])
        self.step = content["step"]
        self.best_accuracy = dict(content["best_accuracy"])
        self.bad_records = list(content["bad_records"])
