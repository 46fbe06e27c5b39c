"""IJB-B / IJB-C metadata as insightface's IJB_release ships it, read into arrays.

Layout under ROOT (``IJB_release/IJBC``, ``IJB_release/IJBB``), SET being ``ijbc`` or ``ijbb``:
  meta/SET_face_tid_mid.txt          ``image template_id media_id``, one line per image of a template
  meta/SET_template_pair_label.txt   ``template1 template2 label`` (label 1 = same subject)
  meta/SET_name_5pts_score.txt       ``image x1 y1 ... x5 y5 faceness``, the same images in the same order
  meta/SET_1N_gallery_G1.csv, _G2    (IJB-B: ``ijbb_1N_gallery_S1.csv``, ``_S2``) and
  meta/SET_1N_probe_mixed.csv        CSV with a header row: column 0 template id, column 1 subject id
  loose_crop/<image>                 the images the 5-point landmarks refer to

The files are read a block of lines at a time by evaluation/ijb/text.py, which parses numbers as
``int()`` and ``float()`` do and names the file and line of anything malformed; values are what the
references' readers give (float32 landmarks and faceness).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

from runtime import DataFormatError, UnknownName

from .text import Block, Names, parsed_blocks

SETS = ("ijbc", "ijbb")
GALLERIES = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}


@dataclass(frozen=True)
class IJBFiles:
    """Where each piece of an IJB set lives; ``one_to_n`` is None when the set ships no 1:N lists."""

    root: str
    set_name: str
    template_media: str
    pairs: str
    landmarks: str
    images: str
    one_to_n: dict | None  # {"G1": path, "G2": path, "probe": path}


def ijb_files(root, set_name: str) -> IJBFiles:
    """The files of `set_name` under `root`; DataFormatError naming the first one that is missing."""
    if set_name not in SETS:
        raise UnknownName("IJB set", set_name, SETS)
    meta = os.path.join(root, "meta")
    if not os.path.isdir(meta):
        raise DataFormatError(meta, f"no meta folder: --root must be the folder holding meta/ and loose_crop/ "
                                    f"(IJB_release/{set_name.upper()})")
    one_to_n = {name: os.path.join(meta, f"{set_name}_1N_gallery_{name}.csv") for name in GALLERIES[set_name]}
    one_to_n["probe"] = os.path.join(meta, f"{set_name}_1N_probe_mixed.csv")
    present = [os.path.isfile(path) for path in one_to_n.values()]
    if any(present) and not all(present):
        missing = [path for path, here in zip(one_to_n.values(), present) if not here]
        raise DataFormatError(missing[0], "1:N list not found (the other 1:N lists are there; all three go together)")
    files = IJBFiles(root, set_name, os.path.join(meta, f"{set_name}_face_tid_mid.txt"),
                     os.path.join(meta, f"{set_name}_template_pair_label.txt"),
                     os.path.join(meta, f"{set_name}_name_5pts_score.txt"), os.path.join(root, "loose_crop"),
                     one_to_n if all(present) else None)
    for path in (files.template_media, files.pairs, files.landmarks):
        if not os.path.isfile(path):
            raise DataFormatError(path, f"IJB metadata file not found (expected under {meta})")
    return files


# ---------------------------------------------------------------- the files

def _template_media_block(block: Block) -> tuple[Names, np.ndarray]:
    starts, stops, kept = block.split_whitespace(3, "image template_id media_id")
    ids = block.integers(starts[:, 1:].ravel(), stops[:, 1:].ravel(), np.repeat(kept, 2), "template_id and media_id")
    return block.names(starts[:, 0], stops[:, 0]), ids.reshape(-1, 2)


def read_template_media(path) -> tuple[Names, np.ndarray, np.ndarray]:
    """(image names, template id int64 [N], media id int64 [N]) of SET_face_tid_mid.txt."""
    names, ids = zip(*parsed_blocks(path, _template_media_block)) or ((), ())
    if not sum(len(part) for part in ids):
        raise DataFormatError(path, "no images listed")
    ids = np.concatenate(ids)
    return Names.join(list(names)), ids[:, 0], ids[:, 1]


def _pair_block(block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values = block.canonical_integers(3)
    if values is None:
        starts, stops, kept = block.split_whitespace(3, "template1 template2 label")
        values = block.integers(starts.ravel(), stops.ravel(), np.repeat(kept, 3),
                                "template1, template2 and label").reshape(-1, 3)
    else:
        kept = np.arange(len(values))
    wrong = np.flatnonzero((values[:, 2] != 0) & (values[:, 2] != 1))
    if wrong.size:
        block.fail(int(kept[wrong[0]]), f"label must be 0 or 1, got {int(values[wrong[0], 2])}")
    small = values.size == 0 or (values[:, :2].min() >= 0 and values[:, :2].max() < 1 << 31)
    ids = values[:, :2].astype(np.int32 if small else np.int64)
    return ids[:, 0], ids[:, 1], values[:, 2].astype(bool)


def read_template_pairs(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template1 [P], template2 [P], label bool [P]) of SET_template_pair_label.txt; the ids are int32
    when they fit (IJB-C lists 15.7 million pairs)."""
    parts = list(parsed_blocks(path, _pair_block))
    if not sum(len(part[0]) for part in parts):
        raise DataFormatError(path, "no template pairs listed")
    return tuple(np.concatenate(column) for column in zip(*parts))


def _landmark_block(block: Block, points: bool = True) -> tuple[Names, np.ndarray]:
    starts, stops, kept = block.split_whitespace(12, "image x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 faceness")
    first = 1 if points else 11
    values = block.decimals(starts[:, first:].ravel(), stops[:, first:].ravel(), np.repeat(kept, 12 - first),
                            "a landmark coordinate or faceness").reshape(-1, 12 - first)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad.size:
        block.fail(int(kept[bad[0]]), "landmarks and faceness must be finite numbers")
    return block.names(starts[:, 0], stops[:, 0]), values.astype(np.float32)


def read_landmarks(path, points: bool = True) -> tuple[Names, np.ndarray | None, np.ndarray]:
    """(image names, landmarks float32 [N, 5, 2] in pixels, faceness float32 [N]) of
    SET_name_5pts_score.txt; float32 as both references hold them. Without `points` only the names
    and faceness are read (all that scoring saved features needs), and the landmarks are None."""
    names, values = zip(*parsed_blocks(path, functools.partial(_landmark_block, points=points))) or ((), ())
    if not sum(len(part) for part in values):
        raise DataFormatError(path, "no images listed")
    values = np.concatenate(values)
    landmarks = np.ascontiguousarray(values[:, :10]).reshape(-1, 5, 2) if points else None
    return Names.join(list(names)), landmarks, values[:, -1].copy()


def _one_to_n_block(block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    starts, stops, kept = block.split_csv("TEMPLATE_ID,SUBJECT_ID,...")
    return (block.integers(starts[:, 0], stops[:, 0], kept, "the template id (column 1)"),
            block.integers(starts[:, 1], stops[:, 1], kept, "the subject id (column 2)"), block.first_line + kept)


def read_one_to_n_list(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(template id int64 [R], subject id int64 [R], line number [R]) of a 1:N gallery or probe CSV
    (one row per image; its header row is skipped, as the reference's ``skiprows=1`` does)."""
    parts = list(parsed_blocks(path, _one_to_n_block, skip_lines=1))
    if not sum(len(part[0]) for part in parts):
        raise DataFormatError(path, "no rows after the header")
    return tuple(np.concatenate(column) for column in zip(*parts))


def line_number(path, row: int, skip_lines: int = 0) -> int:
    """The line of a file holding its `row`-th (from 0) non-blank line after `skip_lines`, for
    naming where a row the readers returned came from."""
    with open(path, "rb") as handle:
        seen = -1
        for number, line in enumerate(handle, 1):
            if number > skip_lines and line.strip():
                seen += 1
                if seen == row:
                    return number
    raise ValueError(f"{path} has no row {row}")


@dataclass(frozen=True, eq=False)
class TemplateList:
    """The templates of a 1:N gallery or probe list: sorted ids, the subject of each (from its
    first row, as the reference's ``np.unique(..., return_index=True)`` takes it) and that row's line."""

    name: str
    path: str
    templates: np.ndarray
    subjects: np.ndarray
    lines: np.ndarray


def read_template_list(path, name: str) -> TemplateList:
    templates, subjects, lines = read_one_to_n_list(path)
    unique, first = np.unique(templates, return_index=True)
    inverse = np.searchsorted(unique, templates)
    differs = np.flatnonzero(subjects != subjects[first][inverse])
    if differs.size:
        row = differs[0]
        raise DataFormatError(path, f"template {templates[row]} is listed with subject {subjects[row]} here "
                                    f"and {subjects[first[inverse[row]]]} on line {lines[first[inverse[row]]]}",
                              f"line {lines[row]}")
    return TemplateList(name, path, unique, subjects[first], lines[first])


@dataclass(frozen=True, eq=False)
class IJBMeta:
    """Everything the evaluation reads from the metadata; image rows in the 5-point file's order."""

    files: IJBFiles
    names: Names              # image paths relative to loose_crop/
    templates: np.ndarray     # int64 [N] template id of each image row
    medias: np.ndarray        # int64 [N] media id of each image row
    landmarks: np.ndarray | None  # float32 [N, 5, 2] (None when not read)
    faceness: np.ndarray      # float32 [N]
    pair_templates: tuple     # (template1 int64 [P], template2 int64 [P])
    labels: np.ndarray        # bool [P]
    galleries: tuple          # TemplateList per gallery (empty without 1:N lists)
    probes: TemplateList | None


def read_ijb_meta(root, set_name: str, landmarks: bool = True) -> IJBMeta:
    """The metadata of `set_name` under `root`; without `landmarks`, meta.landmarks is None."""
    files = ijb_files(root, set_name)
    names, templates, medias = read_template_media(files.template_media)
    landmark_names, landmarks, faceness = read_landmarks(files.landmarks, landmarks)
    row = landmark_names.first_difference(names)
    if row is not None:
        if len(landmark_names) != len(names):
            raise DataFormatError(files.landmarks, f"lists {len(landmark_names)} images, "
                                                   f"{files.template_media} lists {len(names)}: the rows must match")
        raise DataFormatError(files.landmarks, f"image {row + 1} is {landmark_names[row]!r}, but "
                                               f"{files.template_media} has {names[row]!r} there: the rows must match")
    first, second, labels = read_template_pairs(files.pairs)
    galleries, probes = (), None
    if files.one_to_n is not None:
        galleries = tuple(read_template_list(files.one_to_n[name], name) for name in GALLERIES[set_name])
        probes = read_template_list(files.one_to_n["probe"], "probe")
    return IJBMeta(files, names, templates, medias, landmarks, faceness, (first, second), labels, galleries, probes)
