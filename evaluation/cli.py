"""Command-line pieces every eval script shares: the model arguments, the feature-store arguments,
device choice, and where results are written (beside the checkpoint or the features file) and how:
every output is checked at start (`check_outputs`), and files are written after the numbers are
printed (`writing_outputs`), so a folder that cannot be written never costs the result. Each
protocol's own command line is its sub-package's cli module (evaluation/verification/cli.py behind
eval_lfw.py, eval_agedb30.py and eval_cfp.py; evaluation/megaface/cli.py; evaluation/ijb/cli.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re

import torch

import runtime
from backbone import BACKBONES
from runtime import DEVICES, PRECISIONS, UsageError, UserError, check_writable, positive_int, prepare_device
from runtime.artifacts import PARTIAL_SUFFIX

from .model_loading import load_backbone


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (not used with --features)")
    group.add_argument("--checkpoint", help="checkpoint.pt or backbone.pt of a train.py run, or a plain state_dict")
    group.add_argument("--backbone", choices=sorted(BACKBONES), metavar="NAME",
                       help="network to build, overriding the checkpoint's (needed for a plain state_dict); "
                            f"one of {', '.join(sorted(BACKBONES))}")
    group.add_argument("--embedding-size", type=positive_int, metavar="D",
                       help="embedding width, overriding the checkpoint's (needed for a plain state_dict)")
    group.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when present (default)")
    group.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32",
                       help="autocast precision of the forward passes (default fp32)")
    group.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    group.add_argument("--no-flip", action="store_true",
                       help="skip the mirrored images (by default every image is embedded mirrored too)")


def add_store_arguments(parser: argparse.ArgumentParser, default_folder: str):
    """The options of the resumable feature store (evaluation/feature_store.py); the group, for more."""
    group = parser.add_argument_group("feature extraction")
    group.add_argument("--feature-dir", metavar="DIR", help=f"resumable feature store (default {default_folder})")
    group.add_argument("--chunk-size", type=positive_int, default=10000, help="images per resumable chunk")
    group.add_argument("--max-chunks", type=positive_int, metavar="N",
                       help="stop after computing N chunks (to test or spread out a long extraction)")
    group.add_argument("--save-features", metavar="FILE.npz", help="also write the features in --features format")
    return group


def check_model_arguments(parser, args, features_given: bool) -> None:
    """--features replaces the model; a model argument beside it is a mistake, not something to ignore."""
    if features_given:
        given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--backbone", args.backbone),
                                          ("--embedding-size", args.embedding_size)) if value is not None]
        if given:
            parser.error(f"--features replaces the model: drop {', '.join(given)}")
    elif args.checkpoint is None:
        parser.error("--checkpoint is required (or give --features)")


def resolve_device(parser, name: str) -> torch.device:
    """The device the eval script runs on; on the CPU, glibc is also told to recycle freed memory."""
    try:
        device = runtime.resolve_device(name)
    except UsageError as error:
        parser.error(f"--device: {error}")
    prepare_device(device)
    return device


def beside_input(args, name: str) -> str:
    """`name` in the folder of the checkpoint (its run folder) or, without one, of the features file:
    results land beside what they were computed from, never in the repository."""
    return os.path.join(os.path.dirname(args.checkpoint if args.checkpoint is not None else args.features), name)


def load_model(args, device):
    """(model, name, embedding size) from --checkpoint/--backbone/--embedding-size."""
    return load_backbone(args.checkpoint, args.backbone, args.embedding_size, device)


def check_outputs(outputs) -> None:
    """Refuse in one line (exit status 2), before anything is read or computed, an output this user
    cannot write. `outputs`: (path, what it is, is a folder, what to do instead) of each output the
    run will write; a None path is skipped."""
    for path, what, folder, instead in outputs:
        if path:
            check_writable(path, what, folder=folder, instead=instead)


class OutputError(UserError):
    """A file could not be written after the numbers were printed (a disk that filled up, a folder
    removed or locked since the start)."""


@contextlib.contextmanager
def writing_outputs():
    """Wrap the writing of the files that follow the printed numbers: an OSError becomes one line
    that names the file and says the numbers printed above are complete."""
    try:
        yield
    except OSError as error:
        where = "an output file" if error.filename is None else re.sub(  # the file, not its temporary name
            rf"\.\d+{re.escape(PARTIAL_SUFFIX)}$", "", os.fspath(error.filename))
        raise OutputError(f"{where}: could not be written ({error.strerror or error}); the numbers printed above "
                          "are complete") from None
