"""The DeepGlint Trillion-Pairs submission form: one feature binary of every image of a folder.

    python tools/model/deepglint_features.py --checkpoint runs/NAME/backbone.pt IMAGES_DIR OUT.bin

IMAGES_DIR: the aligned 112x112 test images, any folder tree. Their order is the old repository's:
it wrote one <image>.feat file per image and merged them sorted by path (eval_deepglint_merge.py),
so the images are sorted by path + ".feat". OUT.bin: a 16-byte OpenCV-mat header (int32 rows,
cols, cols * 4, 5 = float32), then the N x D float32 rows, exactly what that script's save_mat
wrote; OUT_paths.txt beside it lists the images in row order (a label file for eval_deepglint.py
follows it). Each feature is the L2-normalised sum of the embeddings of the image and of its mirror
image (only the image's with --no-flip).

The extraction is resumable and streaming: features go --chunk-size images at a time into the
resumable store of evaluation/feature_store.py (default OUT.bin.store/), through a memory map, so
the 1.86 M x 512 floats (3.8 GB) are never all in memory; a run that stops (interrupted, a bad image,
--max-chunks) resumes where it stopped when started again. When every chunk is in, OUT.bin is
written from the store a block at a time (through OUT.bin.partial, so OUT.bin is whole or absent)
and the store is removed (--keep-store keeps it).
"""

import argparse
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import image_files  # noqa: E402
from evaluation.cli import (add_model_arguments, check_model_arguments, check_outputs, load_model,  # noqa: E402
                            resolve_device)
from evaluation.deepglint.files import list_images, write_feature_bin  # noqa: E402
from evaluation.feature_store import Embedder, checkpoint_identity, store_features  # noqa: E402
from runtime import atomic_file, positive_int, run_cli  # noqa: E402

KIND = "deepglint"
COPY_ROWS = 1 << 16  # rows copied from the store into OUT.bin at a time (128 MiB of 512-d float32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", metavar="IMAGES_DIR", help="aligned 112x112 test images (any folder tree)")
    parser.add_argument("out", metavar="OUT.bin", help="the feature binary to write")
    add_model_arguments(parser)
    store = parser.add_argument_group("resumable extraction")
    store.add_argument("--feature-dir", metavar="DIR", help="the resumable store (default OUT.bin.store)")
    store.add_argument("--chunk-size", type=positive_int, default=10000, help="images per resumable chunk")
    store.add_argument("--max-chunks", type=positive_int, metavar="N",
                       help="stop after computing N chunks (to test or spread out a long extraction)")
    store.add_argument("--keep-store", action="store_true", help="keep the store once OUT.bin is written")
    return parser


def paths_file(out: str) -> str:
    return f"{os.path.splitext(out)[0]}_paths.txt"


def write_lines(path: str, lines) -> None:
    with atomic_file(path, "w") as handle:
        handle.writelines(f"{line}\n" for line in lines)


def remove_store(folder: str) -> None:
    """The store's own files, then its folder if nothing else is in it."""
    for name in (f"{KIND}.npy", f"{KIND}_paths.txt", f"{KIND}_progress.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.remove(path)
    if not os.listdir(folder):
        shutil.rmtree(folder)


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_model_arguments(parser, args, features_given=False)
    if not args.out.endswith(".bin"):
        parser.error(f"OUT.bin must end in .bin (the challenge's form), got {args.out}")
    folder = args.feature_dir or f"{args.out}.store"
    check_outputs([(args.out, "OUT.bin", False, "choose a file in a folder you can write"),
                   (folder, "--feature-dir" if args.feature_dir else "feature store (default: OUT.bin.store)", True,
                    "give --feature-dir DIR in a folder you can write")])
    paths = list_images(args.images)
    images = image_files(args.images, paths, args.images)
    device = resolve_device(parser, args.device)
    model, name, size = load_model(args, device)
    embed = Embedder(model, size, device, flip=not args.no_flip, precision=args.precision, batch_size=args.batch_size)
    store = store_features(folder, KIND, images, embed, checkpoint_identity(args.checkpoint, name, size),
                           chunk_size=args.chunk_size, names=paths, max_new_chunks=args.max_chunks)
    if not store.complete:
        sys.exit(f"stopped after {args.max_chunks} chunks (--max-chunks); run the same command to resume")
    features = store.arrays["features"]
    write_feature_bin(args.out, (features[start:start + COPY_ROWS] for start in range(0, len(paths), COPY_ROWS)),
                      len(paths), size)
    write_lines(paths_file(args.out), paths)
    del features, store  # the memory map closes before its file goes
    if not args.keep_store:
        remove_store(folder)
    print(f"{args.out}: {len(paths):,} x {size} float32 features of {args.images} ({name}, mirror images "
          f"{'off' if args.no_flip else 'on'}); image order in {paths_file(args.out)}"
          + (f"; store kept in {folder}" if args.keep_store else ""))


if __name__ == "__main__":
    run_cli(main)
