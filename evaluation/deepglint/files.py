"""The files of the DeepGlint Trillion-Pairs test: the feature binary the challenge took, and the
label list eval_deepglint.py reads beside it.

Feature binary (the old repository's eval_deepglint_merge.py, its ``save_mat``): one OpenCV-mat
header of four little-endian int32 -- rows N, cols D, D * 4 (bytes per row), 5 (OpenCV's CV_32F) --
then the N x D float32 rows, row after row, nothing else. Row i is the feature of the i-th image in
the old script's order: its per-image feature files (``<image path>.feat``) sorted as Python sorts
strings, which is the image paths sorted by ``path + ".feat"``.

Label list: one integer per feature row, in the same order: an identity >= 0 for a probe image, -1
for a distractor.
"""

from __future__ import annotations

import os

import numpy as np

from dataset import read_text_lines, scan_image_tree
from runtime import DataFormatError, atomic_file

from ..opencv_mat import CV_32F, MAT_HEADER

HEADER_BYTES = MAT_HEADER.size  # 16
DISTRACTOR = -1
_CHECK_ROWS = 1 << 14  # rows checked at a time (32 MiB of 512-d float32)


def feature_order(relative_paths) -> list:
    """The paths in the old script's order: its feature files <path>.feat, sorted as strings."""
    return sorted(relative_paths, key=lambda path: path + ".feat")


def list_images(root) -> list:
    """Every image under `root` ('/'-separated relative paths) in feature-file order."""
    return feature_order(scan_image_tree(root))


class FeatureBin:
    """The float32 [N, D] rows of a feature binary, read from the file when asked for: ``len``,
    ``shape``, ``bin[i:j]``, ``bin[index_array]`` (runs of consecutive rows read at once) and
    ``np.asarray(bin)`` (all of it). Reads, not a memory map: a pass over a 3.8 GB file leaves no
    resident copy in the process (the kernel's page cache is another matter)."""

    dtype = np.dtype("<f4")
    ndim = 2

    def __init__(self, path, rows: int, cols: int):
        self.path, self.rows, self.cols = os.fspath(path), rows, cols
        self.shape = (rows, cols)

    def __len__(self) -> int:
        return self.rows

    def _read(self, handle, start: int, count: int) -> np.ndarray:
        handle.seek(HEADER_BYTES + start * 4 * self.cols)
        values = np.fromfile(handle, dtype=self.dtype, count=count * self.cols)
        if values.size != count * self.cols:
            raise DataFormatError(self.path, f"rows {start}..{start + count - 1} cut short: the file changed "
                                             "after its header was checked")
        return values.reshape(count, self.cols)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice) and index.indices(self.rows)[2] == 1:
            start, stop, _ = index.indices(self.rows)
            with open(self.path, "rb") as handle:
                return self._read(handle, start, max(0, stop - start))
        rows = np.arange(self.rows)[index] if isinstance(index, slice) else np.asarray(index)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if rows.ndim == 0:
            return self[int(rows):int(rows) + 1][0] if 0 <= rows < self.rows else self[[int(rows)]][0]
        rows = rows.astype(np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"rows outside 0..{self.rows - 1}")
        out = np.empty((rows.size, self.cols), dtype=self.dtype)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        with open(self.path, "rb") as handle:
            for first, last in zip(np.concatenate(([0], breaks)), np.concatenate((breaks, [rows.size]))):
                if last > first:
                    out[first:last] = self._read(handle, int(rows[first]), int(last - first))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self[:]
        return values if dtype is None else values.astype(dtype)


def read_feature_bin(path) -> FeatureBin:
    """The float32 [N, D] rows of a feature binary (a FeatureBin, read on demand), after checking its
    header against its size."""
    if not os.path.isfile(path):
        raise DataFormatError(path, "feature file not found")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise DataFormatError(path, f"{size} bytes: too short for the 16-byte header (rows, cols, cols*4, 5)")
    with open(path, "rb") as handle:
        rows, cols, stride, kind = MAT_HEADER.unpack(handle.read(HEADER_BYTES))
    if rows < 1 or cols < 1 or stride != 4 * cols or kind != CV_32F:
        raise DataFormatError(path, f"unreadable header (rows {rows}, cols {cols}, row bytes {stride}, type {kind}); "
                                    f"expected rows >= 1, cols >= 1, row bytes = 4 * cols, type {CV_32F} (float32)")
    expected = HEADER_BYTES + rows * stride
    if size != expected:
        raise DataFormatError(path, f"{size} bytes, but its header ({rows} rows x {cols} float32) needs {expected}"
                                    f"{' (truncated)' if size < expected else ' (trailing bytes)'}")
    return FeatureBin(path, rows, cols)


def write_feature_bin(path, blocks, rows: int, cols: int) -> None:
    """Write a feature binary from `blocks`, float [n, cols] arrays that together hold `rows` rows,
    one block in memory at a time; through a temporary file, so `path` is whole or absent."""
    written = 0
    with atomic_file(path) as handle:
        handle.write(MAT_HEADER.pack(rows, cols, 4 * cols, CV_32F))
        for block in blocks:
            block = np.ascontiguousarray(block, dtype="<f4")
            if block.ndim != 2 or block.shape[1] != cols:
                raise ValueError(f"a block of shape {block.shape} for {cols}-wide rows")
            handle.write(block.tobytes())
            written += block.shape[0]
        if written != rows:
            raise ValueError(f"{written} rows written for a header of {rows}")


def check_feature_rows(path, features, block: int = _CHECK_ROWS) -> None:
    """Every row finite and not all zero (a cosine needs a norm), read a block at a time."""
    for start in range(0, len(features), block):
        rows = np.asarray(features[start:start + block])
        finite = np.isfinite(rows).all(axis=1)
        nonzero = (rows != 0).any(axis=1)
        bad = np.flatnonzero(~(finite & nonzero))
        if bad.size:
            row = start + int(bad[0])
            problem = "holds a NaN or infinite value" if not finite[bad[0]] else "is all zeros (no cosine)"
            raise DataFormatError(path, f"feature row {row} {problem}")


def read_labels(path, n_rows: int | None = None) -> np.ndarray:
    """int64 [N] of a label list: one integer per line, >= 0 (a probe's identity) or -1 (a distractor)."""
    lines = read_text_lines(path, "label file")
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        labels = np.array([line.strip() for line in lines]).astype(np.int64) if lines else np.empty(0, np.int64)
        valid = bool((labels >= DISTRACTOR).all())
    except (ValueError, OverflowError):
        valid = False
    if not valid:  # find the first bad line, for the message
        for number, line in enumerate(lines, 1):
            try:
                value = int(line.strip())
            except ValueError:
                value = None
            if value is None or not DISTRACTOR <= value <= np.iinfo(np.int64).max:
                raise DataFormatError(path, f"{line.strip()!r} is not a label: expected an integer identity >= 0, "
                                            "or -1 for a distractor", f"line {number}")
    if labels.size == 0:
        raise DataFormatError(path, "label file is empty")
    if n_rows is not None and labels.size != n_rows:
        raise DataFormatError(path, f"{labels.size} labels for the {n_rows} rows of the feature file "
                                    "(one label per row, in the same order)")
    return labels
