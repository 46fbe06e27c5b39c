"""Pack an image list or an image folder into an insightface `.rec/.idx/property` pack.

    python tools/data/images2rec.py --folder data/webface_images data/webface_pack
    python tools/data/images2rec.py --list data/webface_images/list.txt --root data/webface_images data/webface_pack

Images are grouped by label (so the pack gets insightface's per-identity records) and stored as
they are when they are 112x112 JPEG/PNG; other sizes are refused, or resized and re-encoded with
--resize. The result reads back with MXNet's MXIndexedRecordIO as well as with dataset.RecordDataset.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import read_image_list, scan_image_folder, write_record_pack  # noqa: E402
from runtime import check_writable, run_cli  # noqa: E402
from dataset.image_codec import check_size, decode_image, read_image_bytes  # noqa: E402


def samples(root, paths, labels, resize: bool):
    for index in np.argsort(labels, kind="stable"):
        path = os.path.join(root, paths[index])
        payload = read_image_bytes(path)
        image = decode_image(payload, path, "whole file")
        resized = check_size(image, "resize" if resize else "error", path, "whole file")
        yield (payload if resized is image else resized), int(labels[index])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", help="image folder with one sub-folder per identity")
    source.add_argument("--list", help="`relative/path label` list (paths relative to --root)")
    parser.add_argument("--root", help="root folder of the --list paths (default: the list's folder)")
    parser.add_argument("--resize", action="store_true", help="resize images that are not 112x112")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for resized images")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must lie in 1..100, got {args.quality}")
    check_writable(args.out_dir, "OUT_DIR", folder=True, instead="choose a folder you can write")
    if args.folder:
        root = args.folder
        paths, labels, _ = scan_image_folder(root)
    else:
        root = args.root or os.path.dirname(os.path.abspath(args.list))
        paths, labels = read_image_list(args.list)
    count = write_record_pack(args.out_dir, samples(root, paths, labels, args.resize),
                              num_classes=int(labels.max()) + 1, quality=args.quality, total=len(paths))
    print(f"{count} images of {len(np.unique(labels))} identities -> {args.out_dir}/train.rec")


if __name__ == "__main__":
    run_cli(main)
