"""Images per second of the face detector (dataset.detect_faces, MTCNN) in one process.

    python tools/benchmark_detect.py                          # matplotlib's grace_hopper.jpg (512x600)
    python tools/benchmark_detect.py --long-side 1280 --threads 1 --json
    python tools/benchmark_detect.py --images photos/alice --device cuda

The default photo ships with matplotlib, so the figure can be reproduced anywhere. Time grows with
the pixel count and with --min-face-size getting smaller (the pyramid's first level is the image
scaled by 12 / min-face-size); --long-side resizes the photo first to show that. Decoding is not
timed: the photos are read once before the clock starts.
"""

import argparse
import json
import os
import platform
import sys
import time

import cv2
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dataset.detect import detect_faces, detector  # noqa: E402
from dataset.image_codec import read_image_file  # noqa: E402
from dataset.image_list import IMAGE_EXTENSIONS  # noqa: E402
from runtime import DataFormatError, positive_int, resolve_device, run_cli  # noqa: E402


def sample_photo() -> str:
    import matplotlib
    return os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_photos(folder: str | None, long_side: int | None) -> tuple[list, list[str]]:
    if folder:
        if not os.path.isdir(folder):
            raise DataFormatError(folder, "photo folder not found")
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise DataFormatError(folder, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder")
        paths = [os.path.join(folder, n) for n in names]
    else:
        paths = [sample_photo()]
    photos = [read_image_file(p) for p in paths]
    if long_side:
        photos = [cv2.resize(p, None, fx=long_side / max(p.shape[:2]), fy=long_side / max(p.shape[:2]),
                             interpolation=cv2.INTER_AREA) for p in photos]
    return photos, paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="a folder of photos (default: matplotlib's grace_hopper.jpg)")
    parser.add_argument("--long-side", type=positive_int, help="resize each photo to this longer side first")
    parser.add_argument("--min-face-size", type=float, default=20.0)
    parser.add_argument("--runs", type=positive_int, default=20, help="timed detections (cycling over the photos)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    photos, paths = load_photos(args.images, args.long_side)
    detector(device)  # the weights load outside the timing
    for photo in photos[:2]:  # first calls allocate and pick kernels
        detect_faces(photo, args.min_face_size, device=device)
    faces = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for run in range(args.runs):
        faces += len(detect_faces(photos[run % len(photos)], args.min_face_size, device=device)[0])
    seconds = time.perf_counter() - start  # each call ends by copying its results to the host: synchronised
    pixels = sum(p.shape[0] * p.shape[1] for p in photos) / len(photos)
    result = {"images_per_s": args.runs / seconds, "ms_per_image": 1000 * seconds / args.runs,
              "faces_per_image": faces / args.runs, "photos": len(photos), "mean_megapixels": pixels / 1e6,
              "first_photo": paths[0], "size_hw": list(photos[0].shape[:2]), "min_face_size": args.min_face_size,
              "device": str(device), "threads": torch.get_num_threads(),
              "processor": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['images_per_s']:.2f} images/s ({result['ms_per_image']:.1f} ms/image, "
              f"{result['faces_per_image']:.2f} faces/image) on {len(photos)} photo(s) of "
              f"{result['mean_megapixels']:.2f} MP (first {os.path.basename(paths[0])} "
              f"{photos[0].shape[1]}x{photos[0].shape[0]}), min face {args.min_face_size:g} px, "
              f"{result['device']} with {result['threads']} threads: {result['processor']}")


if __name__ == "__main__":
    run_cli(main)
