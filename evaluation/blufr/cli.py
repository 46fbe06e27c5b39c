"""eval_blufr.py: LFW under BLUFR (evaluation/blufr/protocol.py says what is computed) from a
checkpoint and the LFW image folder, or from saved features.

    python eval_blufr.py --config blufr_lfw_config.mat --images LFW_DIR --checkpoint runs/NAME/backbone.pt
    python eval_blufr.py --config blufr_lfw_config.mat --features lfw_blufr.npy --json

Images: each imageList name ``Name_0001.jpg`` is read as LFW_DIR/Name/Name_0001.jpg (a name holding a
'/' is taken as a path relative to LFW_DIR); --image-ext replaces the extension of every name (for an
aligned copy saved as .png). The crops must be aligned 112x112, as for every eval script. Each
feature is the L2-normalised sum of the embeddings of the image and of its mirror image (only the
image's with --no-flip). --features reads a float [N, D] .npy in imageList order, as --save-features
writes it.

Output: a table of the trials, the two reported numbers (mean - std over the trials of VR at FAR =
0.1% and of DIR at rank 1, FAR = 1%), and then three figures (blufr_roc.png, blufr_open_set_roc.png,
blufr_cmc.png) beside the checkpoint or the features file, or in --out-dir. --json adds one last line
of JSON: vr, dir (fractions), vr_trials, dir_trials, and the means, stds and set sizes. The figures'
folder and --save-features are checked writable before anything is read, and written after the
numbers are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from dataset import image_files
from runtime import DataFormatError, atomic_file

from ..cli import (add_model_arguments, beside_input, check_model_arguments, check_outputs, load_model, resolve_device,
                   writing_outputs)
from ..feature_store import Embedder
from ..npz_files import check_float_matrix
from .config import read_blufr_config
from .protocol import evaluate_blufr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data: --config with --images (and a model), or with --features")
    data.add_argument("--config", required=True, metavar="FILE.mat", help="BLUFR's blufr_lfw_config.mat")
    data.add_argument("--images", metavar="DIR", help="aligned LFW: DIR/Name/Name_0001.jpg for each imageList name")
    data.add_argument("--image-ext", metavar=".EXT", help="replace each imageList name's extension (e.g. .png)")
    data.add_argument("--features", metavar="FILE.npy", help="float [N, D] features in imageList order")
    add_model_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--save-features", metavar="FILE.npy", help="also write the features for --features")
    output.add_argument("--out-dir", metavar="DIR",
                        help="where the figures go (default: beside the checkpoint, or beside the features file)")
    output.add_argument("--json", action="store_true", help="print one last line of JSON after the table")
    return parser


def image_path(name: str, extension: str | None) -> str:
    """LFW's layout: Name_0001.jpg lives in the folder Name/."""
    if extension is not None:
        name = os.path.splitext(name)[0] + (extension if extension.startswith(".") else "." + extension)
    if "/" in name:
        return name
    return f"{name[:name.rfind('_')]}/{name}" if "_" in name else name


def load_features(path, n_images: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataFormatError(path, "features file not found")
    try:
        features = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # np.load raises several types for foreign or damaged files
        raise DataFormatError(path, f"not a readable .npy array ({type(error).__name__}: {error})") from None
    features = check_float_matrix(path, "features", features, n_images)
    zero = np.flatnonzero(~np.any(features != 0, axis=1))
    if zero.size:
        raise DataFormatError(path, f"features row {int(zero[0])} is all zeros: its cosine scores are undefined")
    return np.asarray(features, dtype=np.float32)


def save_features(path, features: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, features)


def print_table(result, record, origin: str) -> None:
    print(f"BLUFR: {len(record['vr_trials'])} trials over {record['images']} images; {origin}")
    print(f"{'trial':>5}  {'test':>6}  {'VR@FAR=0.1%':>11}  {'gallery':>7}  {'probes (genuine+impostor)':>25}  "
          f"{'DIR@rank1,FAR=1%':>16}")
    rows = zip(result.trial_sizes, record["vr_trials"], record["dir_trials"])
    for trial, (size, vr, dir_value) in enumerate(rows, 1):
        probes = f"{size['genuine_probes']}+{size['impostor_probes']}"
        print(f"{trial:>5}  {size['test']:>6}  {100 * vr:>10.2f}%  {size['gallery']:>7}  {probes:>25}  "
              f"{100 * dir_value:>15.2f}%")
    print(f"verification: VR at FAR = 0.1%: {100 * record['vr']:.2f}% (mean - std; mean "
          f"{100 * record['vr_mean']:.2f}%, std {100 * record['vr_std']:.2f}%)")
    print(f"open-set identification: DIR at rank 1, FAR = 1%: {100 * record['dir']:.2f}% (mean - std; mean "
          f"{100 * record['dir_mean']:.2f}%, std {100 * record['dir_std']:.2f}%)")
    print("figures: " + ", ".join(record["figures"].values()))


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.images is None) == (args.features is None):
        parser.error("give --images (with --checkpoint) or --features, one of the two")
    if args.image_ext is not None and args.images is None:
        parser.error("--image-ext renames the image files of --images; it cannot go with --features")
    check_model_arguments(parser, args, args.features is not None)
    out_dir = (args.out_dir if args.out_dir is not None else os.path.normpath(beside_input(args, ""))) or "."
    check_outputs([(out_dir, "--out-dir" if args.out_dir is not None else "figures folder (default: beside the "
                                                                          "checkpoint or the features file)",
                    True, "give --out-dir DIR in a folder you can write"),
                   (args.save_features, "--save-features", False, "choose a file in a folder you can write")])
    config = read_blufr_config(args.config)
    record = {"config": args.config, "images": len(config.image_list), "checkpoint": args.checkpoint,
              "features": args.features}

    if args.features is not None:
        features = load_features(args.features, len(config.image_list))
        origin = f"features {args.features}"
    else:
        if not os.path.isdir(args.images):
            raise DataFormatError(args.images, "image folder not found")
        paths = [image_path(name, args.image_ext) for name in config.image_list]
        images = image_files(args.images, paths, f"{args.config} (imageList)")
        device = resolve_device(parser, args.device)
        model, name, size = load_model(args, device)
        embed = Embedder(model, size, device, flip=not args.no_flip, precision=args.precision,
                         batch_size=args.batch_size)
        features = embed(images, "LFW features")["features"]
        record.update(backbone=name, embedding_size=size, flip=not args.no_flip, precision=args.precision)
        origin = f"checkpoint {args.checkpoint} ({name}, {size}-d, {args.precision} on {device.type})"
    try:
        result = evaluate_blufr(features, config)
    except ValueError as error:  # a trial without genuine or impostor pairs or probes
        raise DataFormatError(args.config, str(error)) from None
    from .figures import FIGURES, save_blufr_figures  # matplotlib only once the numbers are in
    if args.save_features:
        record["saved_features"] = args.save_features
    record.update(result.to_json(), figures={name: os.path.join(out_dir, file) for name, file in FIGURES.items()})
    # the numbers first, then the files (checked writable at start)
    print_table(result, record, origin)
    if args.json:
        print(json.dumps(record))
    sys.stdout.flush()
    with writing_outputs():
        save_blufr_figures(result, out_dir)
        if args.save_features:
            save_features(args.save_features, features)
