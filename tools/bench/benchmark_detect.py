"""Images per second of the face detector (dataset.detect_faces, MTCNN) in one process.

    python tools/bench/benchmark_detect.py                          # matplotlib's grace_hopper.jpg (512x600)
    python tools/bench/benchmark_detect.py --long-side 1280 --threads 1 --json
    python tools/bench/benchmark_detect.py --images photos/alice --device cuda
    python tools/bench/benchmark_detect.py --facenet-pytorch        # also the reference, side by side

The default photo ships with matplotlib, so the figure can be reproduced anywhere. Time grows with
the pixel count and with --min-face-size getting smaller (the pyramid's first level is the image
scaled by 12 / min-face-size); --long-side resizes the photo first to show that. Decoding is not
timed: the photos are read once before the clock starts. --facenet-pytorch also times facenet-pytorch's
MTCNN (the reference the detector equals, with the same weights and defaults; docs/detector.md) on the
same photos in the same process, and reports the largest difference between the two outputs.
"""

import argparse
import json
import os
import platform
import sys
import time

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset.detect import detect_faces, detector  # noqa: E402
from dataset.image_codec import read_image_file  # noqa: E402
from dataset.image_list import IMAGE_EXTENSIONS  # noqa: E402
from runtime import DataFormatError, UsageError, positive_int, resolve_device, run_cli  # noqa: E402


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


def reference_detector(device, min_face_size: float):
    """facenet-pytorch's MTCNN as a function of a photo giving (boxes, scores, landmarks) best score
    first, as detect_faces gives them."""
    try:
        from facenet_pytorch import MTCNN
    except ImportError as error:
        raise UsageError(f"--facenet-pytorch needs the facenet-pytorch package and torchvision ({error}); "
                         f"`make setup` installs both") from None
    mtcnn = MTCNN(min_face_size=min_face_size, select_largest=False, keep_all=True, device=device)

    def detect(photo):
        boxes, scores, landmarks = mtcnn.detect(photo, landmarks=True)
        if boxes is None:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        return boxes, np.asarray(scores, dtype=np.float64), landmarks
    return detect


def largest_difference(ours, reference) -> float | None:
    """The largest coordinate difference in pixels between two (boxes, scores, landmarks) results;
    None when they do not hold the same number of faces."""
    if len(ours[0]) != len(reference[0]):
        return None
    if not len(ours[0]):
        return 0.0
    return float(max(np.abs(ours[0] - reference[0]).max(), np.abs(ours[2] - reference[2]).max()))


def timed(detect, photos, runs, device) -> tuple[float, int, list]:
    """(seconds for `runs` detections cycling over `photos`, faces found in all, the result of each
    photo's first detection in the timed runs)."""
    for photo in photos[:2]:  # first calls allocate and pick kernels
        detect(photo)
    faces, results = 0, []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for run in range(runs):
        result = detect(photos[run % len(photos)])
        faces += len(result[0])
        if run < len(photos):
            results.append(result)
    # Each call ends by copying its results to the host: synchronised.
    return time.perf_counter() - start, faces, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", help="a folder of photos (default: matplotlib's grace_hopper.jpg)")
    parser.add_argument("--long-side", type=positive_int, help="resize each photo to this longer side first")
    parser.add_argument("--min-face-size", type=float, default=20.0)
    parser.add_argument("--runs", type=positive_int, default=20, help="timed detections (cycling over the photos)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--facenet-pytorch", action="store_true",
                        help="also time facenet-pytorch's MTCNN on the same photos and compare the outputs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.min_face_size > 0:
        parser.error(f"--min-face-size {args.min_face_size}: must be a positive number of pixels")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    photos, paths = load_photos(args.images, args.long_side)
    detector(device)  # the weights load outside the timing
    seconds, faces, results = timed(lambda photo: detect_faces(photo, args.min_face_size, device=device),
                                    photos, args.runs, device)
    pixels = sum(p.shape[0] * p.shape[1] for p in photos) / len(photos)
    result = {"images_per_s": args.runs / seconds, "ms_per_image": 1000 * seconds / args.runs,
              "faces_per_image": faces / args.runs, "photos": len(photos), "mean_megapixels": pixels / 1e6,
              "first_photo": paths[0], "size_hw": list(photos[0].shape[:2]), "min_face_size": args.min_face_size,
              "device": str(device), "threads": torch.get_num_threads(),
              "processor": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()}
    if args.facenet_pytorch:
        reference = reference_detector(device, args.min_face_size)
        reference_seconds, _, reference_results = timed(reference, photos, args.runs, device)
        differences = [largest_difference(o, r) for o, r in zip(results, reference_results)]
        result.update({"facenet_pytorch_images_per_s": args.runs / reference_seconds,
                       "facenet_pytorch_ms_per_image": 1000 * reference_seconds / args.runs,
                       "photos_with_other_faces": sum(d is None for d in differences),
                       "largest_difference_px": max((d for d in differences if d is not None), default=0.0)})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['images_per_s']:.2f} images/s ({result['ms_per_image']:.1f} ms/image, "
              f"{result['faces_per_image']:.2f} faces/image) on {len(photos)} photo(s) of "
              f"{result['mean_megapixels']:.2f} MP (first {os.path.basename(paths[0])} "
              f"{photos[0].shape[1]}x{photos[0].shape[0]}), min face {args.min_face_size:g} px, "
              f"{result['device']} with {result['threads']} threads: {result['processor']}")
        if args.facenet_pytorch:
            print(f"facenet-pytorch: {result['facenet_pytorch_images_per_s']:.2f} images/s "
                  f"({result['facenet_pytorch_ms_per_image']:.1f} ms/image); on the {len(differences)} photo(s) "
                  f"compared, boxes and landmarks differ by at most {result['largest_difference_px']:.4f} px, "
                  f"{result['photos_with_other_faces']} with another number of faces")


if __name__ == "__main__":
    run_cli(main)
