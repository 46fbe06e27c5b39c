"""The one implementation behind eval_lfw.py, eval_agedb30.py and eval_cfp.py.

A verification run reads pairs from one source -- an insightface .bin (decoded a slice at a time),
an image folder with a pair list (LFW ``pairs.txt`` or ``left right flag`` lines), or a features
.npz -- extracts embeddings of every image and of its mirror image (evaluation.features), scores them
with evaluation.verification under the insightface or the seed protocol, prints a table, or one
JSON object with --json, and then writes the ROC as a PNG beside the checkpoint (or beside the
features file) unless --roc says otherwise, and the --save-features file. Both outputs are checked
writable before anything is read.

The features .npz holds ``embeddings`` float [2N, D] (pair i is rows 2i and 2i+1), optionally
``embeddings_flip`` float [2N, D] (the mirrored images) and ``issame`` bool [N]; --save-features
writes it and --features reads it back, so a model's features can be scored again without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dataset import DataFormatError, ImageSequence, image_files, open_bin, read_pairs
from runtime import open_npz, run_cli, save_npz

from ..cli import (add_model_arguments, beside_input, check_model_arguments, check_outputs, load_model, resolve_device,
                   writing_outputs)
from ..features import extract_embeddings
from ..npz_files import check_float_matrix
from .protocol import PROTOCOLS, evaluate_verification

N_FOLDS = 10


# ---------------------------------------------------------------- verification data sources

def open_image_pairs(root, pairs_path) -> tuple[ImageSequence, np.ndarray]:
    """(images in .bin order, pair i being items 2i and 2i+1; issame) of a folder and a pair list."""
    if not os.path.isdir(root):
        raise DataFormatError(root, "image folder not found")
    pairs, issame = read_pairs(pairs_path)
    return image_files(root, [relative for pair in pairs for relative in pair], pairs_path), issame


def load_verification_features(path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(embeddings [2N, D], embeddings_flip or None, issame bool [N]) of a features .npz."""
    arrays = open_npz(path, ("embeddings", "issame"), ("embeddings_flip",))
    issame = arrays["issame"]
    if issame.ndim != 1 or not (issame.dtype == np.bool_ or (np.issubdtype(issame.dtype, np.integer)
                                                             and np.isin(issame, (0, 1)).all())):
        raise DataFormatError(path, f"issame must be N booleans, got dtype {issame.dtype} shape {issame.shape}")
    embeddings = check_float_matrix(path, "embeddings", arrays["embeddings"], 2 * issame.size)
    flipped = arrays.get("embeddings_flip")
    if flipped is not None:
        check_float_matrix(path, "embeddings_flip", flipped, embeddings.shape[0])
        if flipped.shape != embeddings.shape:
            raise DataFormatError(path, f"embeddings_flip has shape {flipped.shape}, embeddings {embeddings.shape}")
    return embeddings, flipped, issame.astype(bool)


# ---------------------------------------------------------------- verification script

def verification_parser(default_set: str, set_choices: tuple) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Pair-verification accuracy of a checkpoint on {default_set} (or any insightface .bin: "
                    "calfw, cplfw, vgg2_fp, ...), 10-fold, under the insightface or the seed protocol.")
    data = parser.add_argument_group("data: one of --bin, --images with --pairs, --features")
    data.add_argument("--bin", help=f"insightface verification .bin (default data/{default_set}.bin)")
    if set_choices:
        data.add_argument("--set", choices=set_choices,
                          help=f"which set, reading data/SET.bin unless --bin is given (default {default_set})")
    data.add_argument("--images", metavar="ROOT", help="image folder the pair list's paths are relative to")
    data.add_argument("--pairs", metavar="FILE", help="LFW pairs.txt or a 'left right flag' list")
    data.add_argument("--features", metavar="FILE.npz", help="saved features instead of images and a model")
    add_model_arguments(parser)
    output = parser.add_argument_group("protocol and output")
    output.add_argument("--protocol", choices=PROTOCOLS, default="insightface", help="(default insightface)")
    output.add_argument("--save-features", metavar="FILE.npz", help="also write the features for --features")
    output.add_argument("--roc", metavar="PATH",
                        help="ROC figure (default roc_<set>_<protocol>.png beside the checkpoint, or beside "
                             "the features file; '' for none)")
    output.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return parser


def _source(parser, args, default_set: str) -> tuple[str, str]:
    """(kind, set name) of the data arguments, after checking exactly one source is given."""
    if (args.images is None) != (args.pairs is None):
        parser.error("--images and --pairs go together: the pair list's paths are relative to the folder")
    given = [flag for flag, value in (("--bin", args.bin), ("--images/--pairs", args.images),
                                      ("--features", args.features)) if value is not None]
    if len(given) > 1:
        parser.error(f"give one data source, not {' and '.join(given)}")
    chosen_set = getattr(args, "set", None)
    if args.bin is not None:
        return "bin", chosen_set or os.path.splitext(os.path.basename(args.bin))[0]
    name = chosen_set or default_set
    if args.images is not None:
        return "images", name
    if args.features is not None:
        return "features", name
    args.bin = os.path.join("data", f"{name}.bin")
    return "bin", name


def print_verification(result, set_name: str, n_pairs: int, flip: bool, origin: str, roc_path: str | None) -> None:
    kind = {"squared_l2_distance": "squared L2 distance", "cosine": "cosine"}.get(result.threshold_kind,
                                                                                 result.threshold_kind)
    print(f"{set_name}: {n_pairs} pairs, {result.protocol} protocol, {len(result.fold_accuracies)} folds, "
          f"mirrored images {'on' if flip else 'off'}; {origin}")
    print(f"{'fold':>4}  {'accuracy':>8}  threshold ({kind})")
    for fold, (accuracy, threshold) in enumerate(zip(result.fold_accuracies, result.thresholds), 1):
        print(f"{fold:>4}  {100 * accuracy:>7.2f}%  {threshold:.4f}")
    print(f"accuracy: {100 * result.accuracy_mean:.2f}% ± {100 * result.accuracy_std:.2f}%")
    print(f"XNorm: {result.xnorm:.4f}")
    for far, tar in result.tar_at_far.items():
        print(f"TAR@FAR={far:.0e}: {100 * tar:.2f}% ± {100 * result.tar_std_at_far[far]:.2f}% "
              f"(FAR reached {result.far_at_far[far]:.2e})")
    print(f"ROC curve: {roc_path}" if roc_path else "ROC curve: not written (--roc '')")


def verification_main(default_set: str, argv=None, set_choices: tuple = ()) -> None:
    parser = verification_parser(default_set, set_choices)
    args = parser.parse_args(argv)
    kind, set_name = _source(parser, args, default_set)
    check_model_arguments(parser, args, kind == "features")
    roc_path = args.roc if args.roc is not None else beside_input(args, f"roc_{set_name}_{args.protocol}.png")
    default_roc = "" if args.roc is not None else " (beside the checkpoint or the features file)"
    check_outputs([(roc_path, "--roc" if args.roc is not None else f"ROC figure{default_roc}", False,
                    "give --roc PATH in a folder you can write, or --roc '' for none"),
                   (args.save_features, "--save-features", False, "choose a file in a folder you can write")])
    flip = not args.no_flip
    record = {"set": set_name, "checkpoint": None, "backbone": None, "embedding_size": None}

    if kind == "features":
        embeddings, flipped, issame = load_verification_features(args.features)
    elif kind == "bin":
        images, issame = open_bin(args.bin)
    else:
        images, issame = open_image_pairs(args.images, args.pairs)
    data_file = {"features": args.features, "bin": args.bin, "images": args.pairs}[kind]
    record.update(bin=args.bin, images=args.images, pairs=args.pairs, features=args.features)
    if issame.size < N_FOLDS:
        raise DataFormatError(data_file, f"only {issame.size} pairs: the {N_FOLDS}-fold protocols need "
                                         f"at least {N_FOLDS}")

    if kind == "features":
        flipped = flipped if flip else None
        flip = flipped is not None
        origin = f"features {args.features}"
    else:
        device = resolve_device(parser, args.device)
        model, name, size = load_model(args, device)
        record.update(checkpoint=args.checkpoint, backbone=name, embedding_size=size, precision=args.precision)
        embeddings, flipped = extract_embeddings(model, images, args.batch_size, device, args.precision, flip=flip,
                                                 description=f"{set_name} features")
        origin = f"checkpoint {args.checkpoint} ({name}, {size}-d, {args.precision} on {device.type})"

    result = evaluate_verification(embeddings, issame, flipped, protocol=args.protocol, n_folds=N_FOLDS)
    record.update(result.to_json(), n_pairs=int(issame.size), flip=flip, roc=roc_path or None)
    if args.save_features:
        record["saved_features"] = args.save_features
    # the numbers first, then the files (checked writable at start): a failed write never costs them
    if args.json:
        print(json.dumps(record), flush=True)
    else:
        print_verification(result, set_name, issame.size, flip, origin, roc_path)
        sys.stdout.flush()
    with writing_outputs():
        if roc_path:
            from ..plot import save_roc_png  # matplotlib only when a figure is asked for
            save_roc_png(result, roc_path, title=f"{set_name} ROC ({args.protocol} protocol)")
        if args.save_features:
            arrays = {"embeddings": embeddings, "issame": issame}
            if flipped is not None:
                arrays["embeddings_flip"] = flipped
            save_npz(args.save_features, **arrays)


def run_verification_script(default_set: str, set_choices: tuple = ()) -> None:
    """The whole body of eval_lfw.py / eval_agedb30.py / eval_cfp.py."""
    run_cli(lambda: verification_main(default_set, sys.argv[1:], set_choices))
