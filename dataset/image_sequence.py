"""The one lazy type for "decode these images in batches": `images[i:j]` is a uint8 [j-i,112,112,3]
RGB array, `images[i]` one image, `len(images)` the count; nothing is decoded before it is asked for.

What an item is and how it becomes an image is the caller's: `read_one(item)` returns one RGB uint8
HWC image (decode a .bin payload, read a file, align a loose crop by its landmarks, ...) and raises
DataFormatError naming the item when it cannot. The sequence then enforces the 112x112 crop size
(refused, or resized with on_size_mismatch='resize'); `locate(item)` is the (file, place) that a size
error names, by default the item itself as a whole file. Give module-level functions (or
functools.partial of them) to keep the sequence picklable for DataLoader workers.
"""

import numpy as np

from .image_codec import IMAGE_SIZE, check_size, check_size_policy


def _whole_file(item) -> tuple:
    return item, "whole file"


class ImageSequence:
    """`items` (any sequence that slices, e.g. a list or a range), each turned into an image by `read_one`."""

    def __init__(self, items, read_one, locate=_whole_file, on_size_mismatch: str = "error"):
        check_size_policy(on_size_mismatch)
        self.items = items
        self.read_one = read_one
        self.locate = locate
        self.on_size_mismatch = on_size_mismatch

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, item) -> np.ndarray:
        path, where = self.locate(item)
        return check_size(self.read_one(item), self.on_size_mismatch, path, where)

    def __getitem__(self, index):
        if not isinstance(index, slice):
            return self._image(self.items[index])
        items = self.items[index]
        out = np.empty((len(items), *IMAGE_SIZE, 3), dtype=np.uint8)
        for row, item in enumerate(items):
            out[row] = self._image(item)
        return out
