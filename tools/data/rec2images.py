"""Unpack an insightface/MXNet `.rec/.idx` pack into one folder per identity and a `path label` list.

    python tools/data/rec2images.py data/faces_webface_112x112 data/webface_images

Writes OUT/<label>/<key>.jpg (the encoded bytes as stored, not re-encoded) and OUT/list.txt with
`label/key.jpg label` lines, the layout `train.py` reads as an image list or an image folder.
Replaces the old repository's MXNet-based converter.
"""

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import RecordDataset, write_image_list  # noqa: E402
from runtime import check_writable, run_cli  # noqa: E402
from dataset.image_codec import decode_image, payload_extension  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pack", help="pack folder (train.rec + train.idx), their common prefix, or the .rec")
    parser.add_argument("out_dir")
    parser.add_argument("--no-check", action="store_true", help="copy payloads without test-decoding them")
    args = parser.parse_args(argv)
    pack = RecordDataset(args.pack)
    check_writable(args.out_dir, "OUT_DIR", folder=True, instead="choose a folder you can write")
    paths, labels = [], []
    for key in tqdm(pack.keys.tolist(), desc="unpacking", unit="img"):
        label, payload = pack.read_raw(key)
        label = int(label if np.isscalar(label) else label[0])
        if not args.no_check:
            decode_image(payload, pack.rec_path, f"record key {key}")
        relative = f"{label}/{key}{payload_extension(payload)}"
        os.makedirs(os.path.join(args.out_dir, str(label)), exist_ok=True)
        with open(os.path.join(args.out_dir, relative), "wb") as handle:
            handle.write(payload)
        paths.append(relative)
        labels.append(label)
    write_image_list(os.path.join(args.out_dir, "list.txt"), paths, labels)
    print(f"{len(paths)} images of {len(set(labels))} identities -> {args.out_dir}")


if __name__ == "__main__":
    run_cli(main)
