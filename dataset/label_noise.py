"""Flipped training labels and the record of which were flipped (the ground truth for cleaning).

Symmetric label noise: a chosen ``fraction`` of the images, exactly ``round(fraction x N)`` of them,
each moved to a label drawn uniformly among the *other* classes; a function of ``seed`` only.
The record, ``label_flips.tsv``, has one header line ``key<TAB>true_label<TAB>stored_label`` and one
line per flipped image, ``key`` being its record-pack key (image i of the pack has key i + 1).
"""

from __future__ import annotations

import numpy as np

from runtime.artifacts import atomic_file
from runtime.errors import DataFormatError

FLIPS_HEADER = ("key", "true_label", "stored_label")


def flip_labels(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``labels`` [N] with ``round(fraction x N)`` of them moved to another class."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise must lie in [0, 1), got {fraction!r}")
    if num_classes < 2 and fraction > 0:
        raise ValueError(f"label noise needs at least 2 classes, got {num_classes}")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x4E015E])
    chosen = rng.permutation(len(labels))[:round(fraction * len(labels))]
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=len(chosen))) % num_classes
    return noisy


def write_flips(path, true_labels: np.ndarray, stored_labels: np.ndarray) -> int:
    """Write ``label_flips.tsv`` for the images whose stored label differs; returns their count."""
    flipped = np.flatnonzero(np.asarray(true_labels) != np.asarray(stored_labels))
    with atomic_file(path, "w") as handle:
        handle.write("\t".join(FLIPS_HEADER) + "\n")
        for index in flipped:
            handle.write(f"{index + 1}\t{true_labels[index]}\t{stored_labels[index]}\n")
    return len(flipped)


def read_flips(path) -> dict[int, tuple[int, int]]:
    """{key: (true_label, stored_label)} of a ``label_flips.tsv``; a malformed line is one error naming it."""
    flips = {}
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        if tuple(header) != FLIPS_HEADER:
            raise DataFormatError(path, f"expected the header {' '.join(FLIPS_HEADER)!r} (tab-separated), "
                                        f"got {' '.join(header)!r}", "line 1")
        for number, line in enumerate(handle, start=2):
            fields = line.rstrip("\n").split("\t")
            try:
                key, true_label, stored_label = (int(field) for field in fields)
            except ValueError:
                raise DataFormatError(path, f"expected three tab-separated integers key, true_label, stored_label, "
                                            f"got {line.rstrip()!r}", f"line {number}") from None
            if key < 1 or key in flips:
                raise DataFormatError(path, f"key {key} is {'listed twice' if key in flips else 'below 1'}",
                                      f"line {number}")
            flips[key] = (true_label, stored_label)
    return flips
