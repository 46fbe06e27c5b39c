"""A whole training source scanned before a long run: every record decodes at 112x112 with a class
label, the labels fit the class count, no identity is empty, and duplicate images are listed. An
empty identity of an image folder is named by its folder (the label is only its place in the sorted
folder names), one of a pack or a list by its label."""

import hashlib
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tqdm import tqdm

from .errors import DataFormatError
from .image_codec import read_image_bytes
from .image_list import ImageListDataset
from .recordio import RecordDataset

CHUNK = 512  # records per task of a worker process


def record_bytes(source, index: int) -> bytes:
    """The encoded bytes of record `index`: what duplicates are judged by."""
    if isinstance(source, RecordDataset):
        return source.read_raw(int(source.keys[index]))[1]
    if isinstance(source, ImageListDataset):
        return read_image_bytes(os.path.join(source.root, source.paths[index]))
    raise TypeError(f"cannot scan a {type(source).__name__}")


def record_name(source, index: int) -> str:
    if isinstance(source, RecordDataset):
        return f"{source.rec_path} record key {int(source.keys[index])}"
    return os.path.join(source.root, source.paths[index])


def identity_name(source, label: int) -> str:
    """How the user finds identity `label`: its folder (an image folder), else the label."""
    folders = getattr(source, "identities", None) or []
    if label < len(folders):
        return os.path.join(source.root, folders[label])
    return f"label {label}"


def _scan_chunk(source, start: int, stop: int) -> tuple[list, list, list]:
    """(labels or -1, content hashes or '', problems) of records start..stop-1, read as training reads them."""
    labels, hashes, problems = [], [], []
    for index in range(start, stop):
        try:
            _, label = source[index]
            digest = hashlib.sha1(record_bytes(source, index)).hexdigest()
        except DataFormatError as error:
            labels.append(-1)
            hashes.append("")
            problems.append(str(error))
            continue
        labels.append(label)
        hashes.append(digest)
    return labels, hashes, problems


def scan_training_source(source, num_classes: int | None = None, workers: int = 1, progress: bool = True) -> dict:
    """A report: counts, the bad records (one line each), the label range against the class count
    (`num_classes`, else the source's own, else the largest label + 1), empty identities and groups
    of identical images; `ok` is False when anything is wrong."""
    size = len(source)
    chunks = [(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
    labels, hashes, problems = np.full(size, -1, np.int64), [""] * size, []
    bar = tqdm(total=size, unit="img", desc="checking", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(_scan_chunk, [source] * len(chunks), *zip(*chunks))
            for (start, stop), result in zip(chunks, results):
                labels[start:stop], hashes[start:stop] = result[0], result[1]
                problems += result[2]
                bar.update(stop - start)
    else:
        for start, stop in chunks:
            result = _scan_chunk(source, start, stop)
            labels[start:stop], hashes[start:stop] = result[0], result[1]
            problems += result[2]
            bar.update(stop - start)
    bar.close()

    readable = labels >= 0
    declared = num_classes or getattr(source, "num_classes", None)
    classes = declared or (int(labels[readable].max()) + 1 if readable.any() else 0)
    # an image folder's identities are its sub-folders, the last ones included even when empty
    folders = getattr(source, "identities", None) or []
    counts = np.bincount(labels[readable], minlength=max(classes, len(folders)))
    out_of_range = int((labels[readable] >= classes).sum()) if classes else 0
    empty = np.flatnonzero(counts[:max(classes, len(folders))] == 0).tolist()
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        if digest:
            groups.setdefault(digest, []).append(index)
    duplicates = [[record_name(source, i) for i in members] for members in groups.values() if len(members) > 1]
    return {"records": size, "readable": int(readable.sum()), "bad_records": problems, "classes": classes,
            "largest_label": int(labels[readable].max()) if readable.any() else None,
            "labels_out_of_range": out_of_range, "empty_identities": empty,
            "empty_identity_names": [identity_name(source, label) for label in empty],
            "duplicate_groups": duplicates,
            "ok": not problems and not out_of_range and not empty and not duplicates}
