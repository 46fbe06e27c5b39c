"""Write the synthetic face data set (dataset/synthetic.py) in insightface's layout.

    python tools/data/make_synthetic.py data/synthetic

OUT_DIR/train.rec, train.idx, property: the training identities 0 .. N-1, K images each (of every
pose and age the test sets hold), as an insightface record pack; OUT_DIR/lfw.bin, agedb_30.bin, cfp_fp.bin: verification pairs over three
further, disjoint ranges of held-out identities, with the real files' pair counts and fold layout.
Prints each set's raw-pixel baseline (the accuracy a network must beat) and saves a picture of
some identities and pairs (OUT_DIR/synthetic_grid.png, or --grid PATH; docs/data.md's picture is made
with --grid result/synthetic_grid.png). With --label-noise F, that fraction of the training images is
stored under another identity's label, and OUT_DIR/label_flips.tsv records which (dataset/label_noise.py).

The defaults (500 identities x 30 images = 15,000 images) suit the CPU demo, which sees some
15-30k images in its five minutes: one or two passes over enough identities for the embedding to
generalise to unseen ones, yet few enough classes for the margin head to converge in that time.
"""

import argparse
import functools
import os
import sys
from multiprocessing import Pool

import cv2
import numpy as np
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
sys.path.insert(0, REPO)
from dataset import encode_image, write_bin, write_record_pack  # noqa: E402
from dataset.label_noise import flip_labels, write_flips  # noqa: E402
from evaluation.verification import raw_pixel_baseline  # noqa: E402
from runtime import check_writable, run_cli  # noqa: E402
from dataset.synthetic import (DEFAULT_DIFFICULTY, VERIFICATION_FOLDS, SyntheticFaces,  # noqa: E402
                               identity_ranges, plan_pairs, render_pairs)

# (option name, kind of pairs, file name) of the three verification sets.
VERIFICATION_SETS = (("lfw_pairs", "lfw", "lfw.bin"), ("agedb_pairs", "agedb", "agedb_30.bin"),
                     ("cfp_pairs", "cfp", "cfp_fp.bin"))
PAIRS_PER_TASK = 50


def _encoded_identity(faces: SyntheticFaces, images_per_identity: int, quality: int,
                      identity: int) -> list[bytes]:
    # Workers encode too, so the writing process only copies bytes.
    return [encode_image(faces.render(identity, index, "train"), quality)
            for index in range(images_per_identity)]


def _pair_chunk(faces: SyntheticFaces, plan, start: int) -> np.ndarray:
    return render_pairs(faces, plan, start, min(start + PAIRS_PER_TASK, len(plan.issame)))


def write_training_pack(pool: Pool, faces: SyntheticFaces, out_dir: str, identities: int,
                        images_per_identity: int, quality: int, label_noise: float = 0.0) -> int:
    """Returns how many labels were flipped (recorded in OUT_DIR/label_flips.tsv when label_noise > 0)."""
    true_labels = np.repeat(np.arange(identities), images_per_identity)
    stored_labels = flip_labels(true_labels, label_noise, identities, faces.seed)
    render = functools.partial(_encoded_identity, faces, images_per_identity, quality)
    payloads = (payload for identity_payloads in pool.imap(render, range(identities), chunksize=4)
                for payload in identity_payloads)
    write_record_pack(out_dir, zip(payloads, stored_labels), num_classes=identities, quality=quality,
                      total=identities * images_per_identity)
    flips_path = os.path.join(out_dir, "label_flips.tsv")
    if label_noise > 0:
        return write_flips(flips_path, true_labels, stored_labels)
    if os.path.exists(flips_path):  # a clean pack written over a noisy one
        os.remove(flips_path)
    return 0


def write_verification_set(pool: Pool, faces: SyntheticFaces, path: str, kind: str,
                           num_pairs: int, first_identity: int, num_identities: int,
                           quality: int) -> float:
    """Renders and writes one .bin; returns its raw-pixel baseline accuracy."""
    plan = plan_pairs(kind, num_pairs, first_identity, num_identities, faces.seed)
    render = functools.partial(_pair_chunk, faces, plan)
    chunks = pool.imap(render, range(0, num_pairs, PAIRS_PER_TASK))
    images = np.concatenate(list(tqdm(chunks, total=-(-num_pairs // PAIRS_PER_TASK),
                                      desc=os.path.basename(path), unit="chunk")))
    write_bin(path, images, plan.issame, quality)
    return raw_pixel_baseline(images, plan.issame)


def save_grid(faces: SyntheticFaces, path: str, ranges: dict[str, range]) -> None:
    """Rows of 8 training images of 6 identities, then 4 CFP-like and 4 AgeDB-like matched pairs
    of held-out identities (each pair two adjacent tiles)."""
    rows = [[faces.render(identity, index, "train") for index in range(8)]
            for identity in ranges["train"][:6]]
    for kind in ("cfp", "agedb"):
        plan = plan_pairs(kind, 2 * VERIFICATION_FOLDS, ranges[kind].start, len(ranges[kind]),
                          faces.seed)
        rows.append(list(render_pairs(faces, plan, 0, 4)))  # the first fold's pairs are matched
    gap = 4
    tile = 112 + gap
    grid = np.full((len(rows) * tile + gap, 8 * tile + 4 * gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            # Pairs get a wider gap between them than inside them.
            x = gap + c * tile + (gap * (c // 2) if r >= len(rows) - 2 else 0)
            grid[gap + r * tile:gap + r * tile + 112, x:x + 112] = image
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, grid[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write the picture {path}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="folder for train.rec/.idx/property and the .bin files")
    parser.add_argument("--identities", type=int, default=500, help="training identities")
    parser.add_argument("--images-per-identity", type=int, default=30)
    parser.add_argument("--held-out-identities", type=int, default=1000,
                        help="identities of each verification set (each set has its own)")
    parser.add_argument("--lfw-pairs", type=int, default=6000, help="0 skips lfw.bin")
    parser.add_argument("--agedb-pairs", type=int, default=6000, help="0 skips agedb_30.bin")
    parser.add_argument("--cfp-pairs", type=int, default=7000, help="0 skips cfp_fp.bin")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY,
                        help="nuisance strength in [0, 1] (see dataset/synthetic.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of stored images")
    parser.add_argument("--label-noise", type=float, default=0.0, metavar="F",
                        help="fraction in [0, 1) of training images stored under another identity's label "
                             "(uniform over the others); OUT_DIR/label_flips.tsv lists them")
    parser.add_argument("--grid", help="picture of sample identities and pairs (default "
                                       "OUT_DIR/synthetic_grid.png; '' for none)")
    args = parser.parse_args(argv)
    if args.grid is None:
        args.grid = os.path.join(args.out_dir, "synthetic_grid.png")
    positive = {"--identities": args.identities, "--images-per-identity": args.images_per_identity,
                "--workers": args.workers}
    for name, value in positive.items():
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.held_out_identities < 2:
        parser.error(f"--held-out-identities must be at least 2 (unmatched pairs need two), "
                     f"got {args.held_out_identities}")
    for option, _, _ in VERIFICATION_SETS:
        value = getattr(args, option)
        if value < 0 or value % (2 * VERIFICATION_FOLDS):
            parser.error(f"--{option.replace('_', '-')} must be 0 or a positive multiple of "
                         f"{2 * VERIFICATION_FOLDS} (10 folds, each half matched), got {value}")
    if not 0.0 <= args.difficulty <= 1.0:
        parser.error(f"--difficulty must lie in [0, 1], got {args.difficulty}")
    if not 0.0 <= args.label_noise < 1.0:
        parser.error(f"--label-noise must lie in [0, 1), got {args.label_noise}")
    if args.label_noise > 0 and args.identities < 2:
        parser.error("--label-noise needs at least 2 --identities (a flipped label moves to another one)")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must lie in 1..100, got {args.quality}")
    check_writable(args.out_dir, "OUT_DIR", folder=True, instead="choose a folder you can write")
    if args.grid:
        check_writable(args.grid, "--grid", instead="choose a file in a folder you can write, or --grid '' for none")
    return args


def main(argv=None):
    args = parse_args(argv)
    faces = SyntheticFaces(args.seed, args.difficulty)
    os.makedirs(args.out_dir, exist_ok=True)
    with Pool(args.workers) as pool:
        flipped = write_training_pack(pool, faces, args.out_dir, args.identities,
                                      args.images_per_identity, args.quality, args.label_noise)
        if flipped:
            print(f"train.rec: {flipped} of {args.identities * args.images_per_identity} labels flipped, "
                  f"listed in {os.path.join(args.out_dir, 'label_flips.tsv')}")
        ranges = identity_ranges(args.identities, args.held_out_identities)
        for option, kind, name in VERIFICATION_SETS:
            num_pairs, held_out = getattr(args, option), ranges[kind]
            if num_pairs:
                baseline = write_verification_set(
                    pool, faces, os.path.join(args.out_dir, name), kind, num_pairs,
                    held_out.start, len(held_out), args.quality)
                print(f"{name}: {num_pairs} pairs of identities {held_out.start}.."
                      f"{held_out.stop - 1}; raw-pixel baseline {baseline:.4f}")
    if args.grid:
        save_grid(faces, args.grid, ranges)
        print(f"picture -> {args.grid}")


if __name__ == "__main__":
    run_cli(main)
