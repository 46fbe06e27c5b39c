"""Pack aligned face crops (JPEG or PNG files) into one .npy, the input of deploy/cpp's face_embed
and face_compare (docs/deploy-cpp.md).

    python tools/data/pack_crops.py data/aligned runs/deploy/crops.npy     # every image under the folder
    python tools/data/pack_crops.py alice.jpg bob.png runs/deploy/two.npy  # these files, in this order
    python tools/data/pack_crops.py alice.jpg runs/deploy/alice.npy        # one crop: [1,112,112,3]

Writes uint8 [N,112,112,3]: RGB, channels last, pixel values as decoded (the network input before
its normalisation). A folder is walked recursively and its images are taken in sorted order; row i
of the .npy (and of face_embed's output) is line i of OUT.txt, written beside it, which names the
image. Crops must be 112x112, as tools/data/align_faces.py writes them; --resize resizes other sizes
(OpenCV INTER_AREA, as the packs' readers do) instead of refusing them.

Why .npy: the C++ side needs no image library (its header is a short text and the data follow it),
and NumPy writes and reads it.
"""

import argparse
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset.image_codec import IMAGE_SIZE, check_size, read_image_file  # noqa: E402
from dataset.image_list import IMAGE_EXTENSIONS, scan_image_tree  # noqa: E402
from runtime import DataFormatError, UsageError, atomic_file, check_writable, run_cli  # noqa: E402


def crop_files(sources: list[str]) -> list[str]:
    """The image files named by `sources` (files, and folders walked recursively, sorted), in order."""
    files = []
    for source in sources:
        if os.path.isdir(source):
            files += [os.path.join(source, relative) for relative in scan_image_tree(source)]
        elif os.path.isfile(source):
            if not source.lower().endswith(IMAGE_EXTENSIONS):
                raise DataFormatError(source, f"not an image file name (valid: {', '.join(IMAGE_EXTENSIONS)})")
            files.append(source)
        else:
            raise DataFormatError(source, "no such file or folder")
    return files


def pack_crops(files: list[str], resize: bool = False, progress: bool = True) -> np.ndarray:
    """uint8 [N,112,112,3] RGB of the image files, in order."""
    crops = np.empty((len(files), *IMAGE_SIZE, 3), dtype=np.uint8)
    for index, path in enumerate(tqdm(files, desc="reading crops", unit="img", disable=not progress)):
        image = read_image_file(path)
        if image.shape[:2] != IMAGE_SIZE and not resize:
            raise DataFormatError(path, f"{image.shape[0]}x{image.shape[1]} pixels, expected a {IMAGE_SIZE[0]}x"
                                        f"{IMAGE_SIZE[1]} aligned crop (tools/data/align_faces.py makes them; --resize "
                                        "resizes)")
        crops[index] = check_size(image, "resize", path, "whole file")
    return crops


def write_npy(path: str, array: np.ndarray) -> None:
    """np.save to exactly `path` through runtime's atomic writer; the folder is created if needed."""
    with atomic_file(path) as handle:
        np.save(handle, array)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="image files and/or folders of them")
    parser.add_argument("out", help="the .npy to write; the names go beside it, in OUT.txt")
    parser.add_argument("--resize", action="store_true", help="resize crops that are not 112x112")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if not args.out.endswith(".npy"):
        raise UsageError(f"{args.out}: the output's name must end in .npy")
    check_writable(args.out, "OUT", instead="choose a file in a folder you can write")
    files = crop_files(args.sources)
    crops = pack_crops(files, args.resize, progress=not args.quiet)
    names_path = args.out[:-len(".npy")] + ".txt"
    write_npy(args.out, crops)
    with atomic_file(names_path, "w") as handle:
        handle.write("".join(f"{name}\n" for name in files))
    print(f"{args.out}: uint8 {list(crops.shape)} RGB crops; row names in {names_path}")


if __name__ == "__main__":
    run_cli(main)
