"""Unpack a verification .bin into image files and a `left right flag` pair list.

    python tools/data/bin2images.py data/lfw.bin data/lfw_images

Writes OUT/00000.jpg, OUT/00001.jpg, ... (pair i is images 2i and 2i+1; the encoded bytes are copied,
not re-encoded) and OUT/pairs.txt with flag 1 for matched and -1 for unmatched pairs, the list format
`eval_lfw.py --pairs` reads. Replaces the old repository's MXNet-based converter.
"""

import argparse
import os
import sys

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import read_bin_payloads, write_pair_list  # noqa: E402
from runtime import check_writable, run_cli  # noqa: E402
from dataset.image_codec import payload_extension  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bin", help="verification .bin file (lfw.bin, agedb_30.bin, cfp_fp.bin, ...)")
    parser.add_argument("out_dir", help="folder for the images and pairs.txt")
    args = parser.parse_args(argv)
    payloads, issame = read_bin_payloads(args.bin)
    check_writable(args.out_dir, "OUT_DIR", folder=True, instead="choose a folder you can write")
    os.makedirs(args.out_dir, exist_ok=True)
    names = []
    for i, payload in enumerate(tqdm(payloads, desc="writing images", unit="img")):
        names.append(f"{i:05d}{payload_extension(payload)}")
        with open(os.path.join(args.out_dir, names[-1]), "wb") as handle:
            handle.write(payload)
    write_pair_list(os.path.join(args.out_dir, "pairs.txt"), zip(names[0::2], names[1::2]), issame)
    print(f"{len(payloads)} images and {len(issame)} pairs ({int(issame.sum())} matched) -> {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
