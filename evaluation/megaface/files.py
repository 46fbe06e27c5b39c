"""The files of MegaFace Challenge 1 around the evaluation itself: the image lists (folders or the
devkit's JSON lists), the devkit's per-image feature files, and the features .npz.

Devkit lists (``facescrub_features_list.json``, ``megaface_features_list.json_1000000_1``):
{"path": [relative image paths], "id": [identity of each path]} ("id" only for FaceScrub; without
it a probe's identity is its path's first folder).

Devkit feature files, in the layout of insightface's gen_megaface.py: ``<image path>_<suffix>.bin``
under DIR/facescrub and DIR/megaface, mirroring the image lists; four little-endian int32 (rows = D,
cols = 1, 4 = bytes per element, 5 = OpenCV's CV_32F), then the D float32 values.

Features .npz: probe_embeddings [P, D], probe_labels [P] int, distractor_embeddings [M, D], and
optionally probe_paths [P] and distractor_paths [M] (strings, which the noise lists and the devkit
files need).
"""

from __future__ import annotations

import json
import os

import numpy as np

from dataset import scan_image_folder, scan_image_tree
from runtime import DataFormatError, l2_normalize, open_npz, save_npz

from ..npz_files import check_float_matrix, check_string_vector
from ..opencv_mat import CV_32F, MAT_HEADER

DEVKIT_FOLDERS = ("facescrub", "megaface")  # probes, distractors


def read_devkit_list(path, with_ids: bool = False) -> tuple[list, list | None]:
    """(relative image paths, identity names or None) of a devkit *_features_list.json."""
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except FileNotFoundError:
        raise DataFormatError(path, "list file not found") from None
    except ValueError as error:  # JSON and UTF-8 decoding errors
        raise DataFormatError(path, f"not a JSON list ({error})") from None
    paths = content.get("path") if isinstance(content, dict) else None
    if not isinstance(paths, list) or not paths or not all(isinstance(item, str) for item in paths):
        raise DataFormatError(path, 'expected the devkit layout {"path": ["relative/image.jpg", ...], ...}')
    ids = content.get("id") if with_ids else None
    if ids is not None and (not isinstance(ids, list) or len(ids) != len(paths)):
        raise DataFormatError(path, f'"id" must name one identity for each of the {len(paths)} paths')
    return paths, ids


def list_probes(root, list_path=None) -> tuple[list, np.ndarray]:
    """(relative paths, int labels) of the FaceScrub probes: a folder per identity, or a devkit list."""
    if list_path is None:
        paths, labels, _ = scan_image_folder(root)
        return paths, labels
    paths, ids = read_devkit_list(list_path, with_ids=True)
    names = ids if ids is not None else [path.replace("\\", "/").split("/")[0] for path in paths]
    return paths, np.unique(np.array([str(name) for name in names]), return_inverse=True)[1].astype(np.int64)


def list_distractors(root, list_path=None) -> list:
    """Relative paths of the distractors: every image under `root`, or a devkit list's."""
    return read_devkit_list(list_path)[0] if list_path is not None else scan_image_tree(root)


def devkit_overlap(out_root, image_roots) -> tuple[str, str] | None:
    """(sub-folder, image folder) where OUT/facescrub or OUT/megaface would lie inside an image
    folder or contain one (links resolved), or None: the devkit files never go among the images."""
    def inside(path, folder):
        return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
    for sub in DEVKIT_FOLDERS:
        target = os.path.realpath(os.path.join(out_root, sub))
        for root in image_roots:
            root = os.path.realpath(root)
            if inside(target, root) or inside(root, target):
                return sub, root
    return None


def write_devkit_files(out_root, probe_paths, probes, distractor_paths, distractors, suffix: str,
                       normalize: bool, block: int = 10000) -> None:
    """OUT/facescrub/<probe path>_<suffix>.bin and OUT/megaface/<distractor path>_<suffix>.bin, the
    features read `block` rows at a time (the distractors may be a memory map of a million rows)."""
    created = set()
    for sub, paths, features in zip(DEVKIT_FOLDERS, (probe_paths, distractor_paths), (probes, distractors)):
        for start in range(0, len(paths), block):
            rows = np.asarray(features[start:start + block], dtype=np.float32)
            for relative, feature in zip(paths[start:start + block], l2_normalize(rows) if normalize else rows):
                target = os.path.join(out_root, sub, f"{relative}_{suffix}.bin")
                folder = os.path.dirname(target)
                if folder not in created:
                    os.makedirs(folder, exist_ok=True)
                    created.add(folder)
                with open(target, "wb") as handle:
                    handle.write(MAT_HEADER.pack(feature.size, 1, 4, CV_32F))
                    handle.write(np.ascontiguousarray(feature, dtype="<f4").tobytes())


def load_megaface_features(path):
    """(probes [P, D], labels [P], distractors [M, D], probe paths or None, distractor paths or None)."""
    arrays = open_npz(path, ("probe_embeddings", "probe_labels", "distractor_embeddings"),
                      ("probe_paths", "distractor_paths"))
    probes = check_float_matrix(path, "probe_embeddings", arrays["probe_embeddings"])
    labels = arrays["probe_labels"]
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (probes.shape[0],):
        raise DataFormatError(path, f"probe_labels must be {probes.shape[0]} integers, got dtype {labels.dtype} "
                                    f"shape {labels.shape}")
    distractors = check_float_matrix(path, "distractor_embeddings", arrays["distractor_embeddings"])
    if distractors.shape[1] != probes.shape[1]:
        raise DataFormatError(path, f"distractor_embeddings are {distractors.shape[1]}-d, probe_embeddings "
                                    f"{probes.shape[1]}-d")
    paths = [check_string_vector(path, key, arrays[key], rows) if key in arrays else None
             for key, rows in (("probe_paths", probes.shape[0]), ("distractor_paths", distractors.shape[0]))]
    return probes, labels.astype(np.int64), distractors, paths[0], paths[1]


def save_megaface_features(path, probes, labels, distractors, probe_paths=None, distractor_paths=None) -> None:
    """The features in the layout load_megaface_features reads (paths only when both are known)."""
    arrays = dict(probe_embeddings=probes, probe_labels=labels, distractor_embeddings=np.asarray(distractors))
    if probe_paths is not None and distractor_paths is not None:
        arrays.update(probe_paths=np.array(probe_paths), distractor_paths=np.array(distractor_paths))
    save_npz(path, **arrays)
