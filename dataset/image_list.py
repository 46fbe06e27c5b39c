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
from .image_sequence import ImageSequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def read_text_lines(path, what: str = "list file") -> list[str]:
    """The lines of a UTF-8 text file; a DataFormatError says '<what> not found' or names the bad byte."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        raise DataFormatError(path, f"{what} not found") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(path, f"not a UTF-8 text list ({error.reason} at byte {error.start})") from None


def _read_lines(path):
    """(line number, stripped text) of the non-empty lines of a text file."""
    return [(number, line.strip()) for number, line in enumerate(read_text_lines(path), 1) if line.strip()]


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


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_folder(root) -> None:
    if not os.path.isdir(root):
        raise DataFormatError(root, "image folder not found")


def scan_image_folder(root) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative paths, labels, identity names) of a folder with one sub-folder per identity."""
    _check_folder(root)
    identities = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    paths, labels = [], []
    for label, identity in enumerate(identities):
        for name in sorted(os.listdir(os.path.join(root, identity))):
            if _is_image(name):
                paths.append(f"{identity}/{name}")
                labels.append(label)
    if not paths:
        raise DataFormatError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in identity sub-folders")
    return paths, np.asarray(labels, dtype=np.int64), identities


def scan_image_tree(root) -> list[str]:
    """Relative '/'-separated paths of every image anywhere under `root` (no labels), sorted."""
    _check_folder(root)
    found = []
    for folder, _, names in os.walk(root):
        relative = os.path.relpath(folder, root).replace(os.sep, "/")
        found += [name if relative == "." else f"{relative}/{name}" for name in names if _is_image(name)]
    if not found:
        raise DataFormatError(root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder tree")
    return sorted(found)


def image_files(root, relative_paths, listed_in, on_size_mismatch: str = "error") -> ImageSequence:
    """The image files under `root`, in the order given, as an ImageSequence. Every file must exist:
    the first missing one is an error naming `listed_in` (where the paths came from) before anything
    is decoded, not minutes into an extraction."""
    paths = [os.path.join(root, relative) for relative in relative_paths]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DataFormatError(missing[0], f"image file listed in {listed_in} not found "
                                          f"({len(missing)} of {len(paths)} images are missing)")
    return ImageSequence(paths, read_image_file, on_size_mismatch=on_size_mismatch)


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


def write_image_list(list_path, paths, labels) -> None:
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{path} {int(label)}\n" for path, label in zip(paths, labels))


def write_pair_list(list_path, pairs, issame) -> None:
    """A `left right flag` list, flag 1 / -1 as the old repository's tools wrote it."""
    with open(list_path, "w", encoding="utf-8") as handle:
        handle.writelines(f"{left} {right} {1 if same else -1}\n" for (left, right), same in zip(pairs, issame))
