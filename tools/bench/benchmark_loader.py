"""Throughput of the training input path: RecordDataset read + JPEG decode + random horizontal flip +
conversion to a uint8 CHW tensor, in one process (the per-worker figure) and through a DataLoader.

    python tools/bench/benchmark_loader.py                      # packs 4,000 synthetic 112x112 JPEGs first
    python tools/bench/benchmark_loader.py --pack data/synthetic --workers 2 --json

A pack of random-noise JPEGs would be slower to decode than faces; the default pack holds rendered
synthetic faces, the closest stand-in for real aligned crops here.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import RecordDataset, TrainingView, write_record_pack  # noqa: E402
from runtime import positive_int, run_cli  # noqa: E402


def make_pack(out_dir, count: int) -> None:
    from dataset.synthetic import SyntheticFaces
    faces = SyntheticFaces(seed=0)
    per_identity = 20
    write_record_pack(out_dir, ((faces.render(i // per_identity, i % per_identity), i // per_identity)
                                for i in range(count)), num_classes=count // per_identity + 1, total=count)


def time_single_process(view, passes: int) -> float:
    view[(0, 0)]  # open the file and warm the decoder outside the timing
    keys = [(epoch, i) for epoch in range(passes) for i in range(len(view))]
    start = time.perf_counter()
    for key in keys:
        view[key]
    return len(keys) / (time.perf_counter() - start)


def time_loader(view, workers: int, batch_size: int, passes: int) -> float:
    loader = torch.utils.data.DataLoader(view, batch_size=batch_size, num_workers=workers, shuffle=True,
                                         pin_memory=False, persistent_workers=workers > 0, drop_last=True)
    for _ in loader:  # start the workers outside the timing
        break
    start = time.perf_counter()
    seen = 0
    for _ in range(passes):
        for images, *_ in loader:
            seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", help="an existing pack; default: a temporary one of synthetic faces")
    parser.add_argument("--images", type=positive_int, default=4000, help="size of the temporary pack")
    parser.add_argument("--passes", type=positive_int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: must be 0 (the main process) or more")
    if args.pack is not None:
        RecordDataset(args.pack)  # opened (and checked) before anything is timed
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        pack = args.pack
        if pack is None:
            pack = scratch
            make_pack(pack, args.images)
        view = TrainingView(RecordDataset(pack), flip=True, seed=0)
        result = {
            "images": len(view),
            "single_process_images_per_second": round(time_single_process(view, args.passes)),
            "workers": args.workers,
            "dataloader_images_per_second": round(time_loader(view, args.workers, args.batch_size, args.passes)),
        }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:36s} {value}")


if __name__ == "__main__":
    run_cli(main)
