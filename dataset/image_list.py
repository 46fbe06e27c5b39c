"""Image folders, image lists and pair lists: the way aligned crops are shipped outside packs.

- image list: one `relative/path label` per line, paths relative to a root folder (CASIA-WebFace
  lists as the old repository used them). Paths may contain spaces: the label is the last field.
- image folder: one sub-folder per identity; labels are the sorted sub-folder names' ranks.
- LFW `pairs.txt`: a first line "10 300" (folds, pairs per half fold), then per fold 300 matched lines
  `name n1 n2` and 300 unmatched lines `name1 n1 name2 n2`; images are `name/name_000n.jpg`.
- `left right flag` lists, as the old repository's AgeDB-30 and CFP-FP tools wrote them: flag 1 for a
  matched pair and -1 (or 0) for an unmatched one; 600 (AgeDB-30) or 700 (CFP-FP) pairs per fold.
"""

import os

import numpy as np

from .errors import DataFormatError
from .image_codec import check_size, check_size_policy, read_image_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _read_lines(path):
    """(line number, stripped text) of the non-empty lines of a text file."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(path, "list file not found") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(path, f"not a UTF-8 text list ({error.reason} at byte {error.start})") from None
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def read_image_list(list_path) -> tuple[list[str], np.ndarray]:
    """(relative paths, int64 labels) from a `path label` list."""
    paths, labels = [], []
    for number, line in _read_lines(list_path):
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataFormatError(list_path, f"expected 'relative/path label', got {line!r}", f"line {number}")
        try:
            label = int(parts[1])
        except ValueError:
            raise DataFormatError(list_path, f"label {parts[1]!r} is not an integer", f"line {number}") from None
        if label < 0:
            raise DataFormatError(list_path, f"label {label} is negative", f"line {number}")
        paths.append(parts[0])
        labels.append(label)
    if not paths:
        raise DataFormatError(list_path, "image list is empty")
    return paths, np.asarray(labels, dtype=np.int64)


def scan_image_folder(root) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative paths, labels, identity names) of a folder with one sub-folder per identity."""
    if not os.path.isdir(root):
        raise DataFormatError(root, "image folder not found")
    identities = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    paths, labels = [], []
    for label, identity in enumerate(identities):
        for name in sorted(os.listdir(os.path.join(root, identity))):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(f"{identity}/{name}")
                labels.append(label)
    if not paths:
        raise DataFormatError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in identity sub-folders")
    return paths, np.asarray(labels, dtype=np.int64), identities


class ImageListDataset:
    """`ds[i] -> (RGB uint8 HWC, label)` over image files, from a list file or a folder of identities.

    Give `list_path` for a `path label` list (paths relative to `root`), or only `root` for an image
    folder with one sub-folder per identity. `on_size_mismatch` as in RecordDataset.
    """

    def __init__(self, root, list_path=None, on_size_mismatch: str = "error"):
        check_size_policy(on_size_mismatch)
        self.root = os.fspath(root)
        self.on_size_mismatch = on_size_mismatch
        if list_path is None:
            self.paths, self.label_array, self.identities = scan_image_folder(root)
        else:
            self.paths, self.label_array = read_image_list(list_path)
            self.identities = None
        self.num_classes = int(self.label_array.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = os.path.join(self.root, self.paths[index])
        image = check_size(read_image_file(path), self.on_size_mismatch, path, "whole file")
        return image, int(self.label_array[index])

    def labels(self) -> np.ndarray:
        return self.label_array


def read_lfw_pairs(pairs_path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """LFW `pairs.txt` -> ([(left, right) relative image paths], issame bool [N])."""
    lines = _read_lines(pairs_path)
    pairs, issame = [], []
    body = lines
    if lines and len(lines[0][1].split()) == 2:  # the "folds pairs-per-half-fold" header line
        body = lines[1:]
    for number, line in body:
        fields = line.split()
        try:
            if len(fields) == 3:
                name, first, second = fields[0], int(fields[1]), int(fields[2])
                pairs.append((f"{name}/{name}_{first:04d}.jpg", f"{name}/{name}_{second:04d}.jpg"))
                issame.append(True)
            elif len(fields) == 4:
                pairs.append((f"{fields[0]}/{fields[0]}_{int(fields[1]):04d}.jpg",
                              f"{fields[2]}/{fields[2]}_{int(fields[3]):04d}.jpg"))
                issame.append(False)
            else:
                raise ValueError
        except ValueError:
            raise DataFormatError(pairs_path, f"expected 'name n1 n2' or 'name1 n1 name2 n2', got {line!r}",
                                  f"line {number}") from None
    if not pairs:
        raise DataFormatError(pairs_path, "no pairs in file")
    return pairs, np.asarray(issame, dtype=bool)


_MATCHED_FLAGS = {"1": True, "-1": False, "0": False}


def read_pair_list(list_path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """A `left right flag` list (flag 1 matched, -1 or 0 unmatched) -> (pairs, issame bool [N])."""
    pairs, issame = [], []
    for number, line in _read_lines(list_path):
        fields = line.split()
        if len(fields) != 3 or fields[2] not in _MATCHED_FLAGS:
            raise DataFormatError(list_path, f"expected 'left right flag' with flag 1, 0 or -1, got {line!r}",
                                  f"line {number}")
        pairs.append((fields[0], fields[1]))
        issame.append(_MATCHED_FLAGS[fields[2]])
    if not pairs:
        raise DataFormatError(list_path, "no pairs in file")
    return pairs, np.asarray(issame, dtype=bool)


def read_pairs(pairs_path) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Either pair-list format. LFW's lines have 2 (header), 4, or 3 fields with an image number
    second; a `left right flag` line has a path second."""
    lines = _read_lines(pairs_path)
    first = lines[0][1].split() if lines else []
    if len(first) in (2, 4) or (len(first) == 3 and first[1].isdigit()):
        return read_lfw_pairs(pairs_path)
    return read_pair_list(pairs_path)


def load_pair_images(root, pairs, on_size_mismatch: str = "error") -> np.ndarray:
    """Images of a pair list, in the .bin order (pair i is rows 2i and 2i+1): uint8 [2N,112,112,3]."""
    images = np.empty((2 * len(pairs), 112, 112, 3), dtype=np.uint8)
    for i, pair in enumerate(pairs):
        for side, relative in enumerate(pair):
            path = os.path.join(root, relative)
            images[2 * i + side] = check_size(read_image_file(path), on_size_mismatch, path, "whole file")
    return images


def write_image_list(list_path, paths, labels) -> None:
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{path} {int(label)}\n" for path, label in zip(paths, labels))


def write_pair_list(list_path, pairs, issame) -> None:
    """A `left right flag` list, flag 1 / -1 as the old repository's tools wrote it."""
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{left} {right} {1 if same else -1}\n" for (left, right), same in zip(pairs, issame))
