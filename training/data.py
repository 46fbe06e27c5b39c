"""The training data of a run: opened and checked before anything is built, then streamed in
micro-batches whose bad records are reported in the main process."""

import os
import signal

import torch

from dataset import DataFormatError, TrainingView, decode_bad_records, open_bin, open_training_set
from runtime import UsageError

from .sampler import StepBatchSampler


def open_training_data(cfg, world: int):
    """(training set, number of classes) after checking that the data opens, holds one global batch,
    and that every label fits the class count (`num_classes`, else the pack's `property` file, else
    the largest label + 1). Raises UsageError naming the file."""
    try:
        train_set = open_training_set(cfg.train_data, cfg.train_root)
        labels = train_set.labels()
    except DataFormatError as error:
        raise UsageError(f"train_data: {error}") from None
    if len(train_set) < cfg.batch_size:
        raise UsageError(f"train_data {cfg.train_data}: {len(train_set)} images, fewer than one batch of "
                         f"batch_size={cfg.batch_size}")
    largest = int(labels.max())
    if int(labels.min()) < 0:
        raise UsageError(f"train_data {cfg.train_data}: label {int(labels.min())} is negative")
    declared, source = cfg.num_classes, "num_classes"
    if not declared and getattr(train_set, "num_classes", None):
        declared = train_set.num_classes
        source = getattr(train_set, "property_path", "the pack's property file")
    if declared and largest >= declared:
        raise UsageError(f"train_data {cfg.train_data}: the largest label is {largest}, but {source} says "
                         f"{declared} classes (labels must lie in 0..{declared - 1}); "
                         f"set num_classes >= {largest + 1} or fix the labels")
    return train_set, declared or largest + 1


def resolve_val_sets(cfg) -> dict[str, str]:
    """{set name: .bin path} of `val_sets`, each found and opened once (UsageError otherwise)."""
    folder = cfg.val_dir or (cfg.train_data if os.path.isdir(cfg.train_data) else os.path.dirname(cfg.train_data))
    paths = {}
    for name in cfg.val_sets:
        path = name if name.endswith(".bin") else os.path.join(folder, f"{name}.bin")
        if not os.path.isfile(path):
            raise UsageError(f"val_sets: verification set {name!r}: {path} not found "
                             f"(set val_dir, or val_sets to names or paths of .bin files, or val_sets= for none)")
        paths[os.path.basename(path)[:-4]] = path
    return paths


def open_val_sets(paths: dict[str, str]) -> dict:
    try:
        return {name: open_bin(path) for name, path in paths.items()}
    except DataFormatError as error:
        raise UsageError(f"val_sets: {error}") from None


def _ignore_stop_signals(_worker_id: int) -> None:
    # The main process decides when to stop (at a step boundary, after a checkpoint); a SIGINT or a
    # scheduler's SIGTERM sent to the whole process group must not kill the workers under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def training_loader(train_set, cfg, context) -> tuple[torch.utils.data.DataLoader, StepBatchSampler]:
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, context.world, context.rank, cfg.grad_accum, cfg.seed)
    view = TrainingView(train_set, cfg.flip, cfg.seed, skip_corrupt=cfg.skip_corrupt)
    # Its own generator: iter(loader) draws the workers' base seed, and drawing it from torch's global
    # generator would shift what dropout, ViT masking and head sampling draw after a resume.
    loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=cfg.workers,
                                         pin_memory=context.device.type == "cuda",
                                         worker_init_fn=_ignore_stop_signals if cfg.workers else None,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    return loader, sampler


class BadRecords:
    """The distinct bad records a run has met. Each is warned about once, with its file and key; a
    bad record without skip_corrupt stops the run with its one-line message."""

    def __init__(self, log, known: list[str] = ()):
        self.log = log
        self.seen = list(known)
        self._known = set(known)

    def micro_batches(self, batches):
        """(images, labels) of each (images, labels, bad) micro-batch of the loader."""
        for images, labels, reports in batches:
            for report in reports:
                errors, fatal = decode_bad_records(report)
                if fatal:
                    hint = "" if "no readable image" in errors[-1].problem else \
                        " (skip_corrupt=true replaces bad records by the next one; tools/data/check_data.py finds them all)"
                    raise DataFormatError(errors[-1].path, errors[-1].problem + hint, errors[-1].where)
                for error in errors:
                    self._note(error)
            yield images, labels

    def _note(self, error: DataFormatError) -> None:
        text = str(error)
        if text not in self._known:
            self._known.add(text)
            self.seen.append(text)
            self.log.info(f"skipping bad record ({len(self.seen)} so far): {text}")
            self.log.event("skipped_record", record=text, total=len(self.seen))

    def __len__(self) -> int:
        return len(self.seen)
