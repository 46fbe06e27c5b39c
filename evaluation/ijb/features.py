"""Where eval_ijb.py's per-image features come from: a features .npz, or extraction from the loose
crops (aligned by their 5 landmarks) into the resumable store of evaluation/feature_store.py.

The .npz holds ``embeddings`` float [N, D] and optionally ``embeddings_flip`` float [N, D] (the
mirror images), row i being line i of SET_name_5pts_score.txt, and optionally ``missing`` bool [N]
(images a run skipped with --skip-missing; their rows are left out of the templates). IJB-C's
469,375 rows of 512-d features are almost 2 GB, so an archive stored uncompressed (what
--save-features and ``np.savez`` write) is read a block of rows at a time
(runtime.artifacts.MappedRows), never loaded whole; a compressed one is loaded.
"""

from __future__ import annotations

import os
import sys
from functools import partial

import numpy as np

from dataset import ImageSequence, align_face, read_image_file
from runtime import DataFormatError, open_npz, save_npz

from ..feature_store import Embedder, checkpoint_identity, store_features
from .protocol import FeatureRows

def load_ijb_features(path, n_images: int) -> tuple[FeatureRows, np.ndarray | None]:
    """(the features, the `missing` mask or None) of a features .npz for `n_images` images."""
    arrays = open_npz(path, ("embeddings",), ("embeddings_flip", "missing"), mapped=("embeddings", "embeddings_flip"))
    for key in ("embeddings", "embeddings_flip"):
        array = arrays.get(key)
        if array is not None and (array.dtype.kind != "f" or len(array.shape) != 2 or array.shape[1] < 1):
            raise DataFormatError(path, f"{key} must be a float [N, D] array, got dtype {array.dtype} shape "
                                        f"{tuple(array.shape)}")
        if array is not None and array.shape[0] != n_images:
            raise DataFormatError(path, f"{key} has {array.shape[0]} rows, the 5-point file lists {n_images} images "
                                        "(row i of the features is line i of that file)")
    missing = arrays.get("missing")
    if missing is not None:
        if missing.dtype != np.bool_ or missing.shape != (n_images,):
            raise DataFormatError(path, f"missing must be {n_images} booleans, got dtype {missing.dtype} shape "
                                        f"{missing.shape}")
    try:
        return FeatureRows(arrays["embeddings"], arrays.get("embeddings_flip")), missing
    except ValueError as error:  # the two arrays' shapes differ
        raise DataFormatError(path, str(error)) from None


def save_ijb_features(path, features: FeatureRows, missing: np.ndarray) -> None:
    """The --features file of these features; the rows of missing images are zeros, flagged in `missing`."""
    arrays = {"embeddings": features.embeddings}
    if features.flipped is not None:
        arrays["embeddings_flip"] = features.flipped
    if features.positions is not None:
        present = features.positions >= 0
        for key, array in arrays.items():
            arrays[key] = np.zeros((len(present), array.shape[1]), dtype=np.float32)
            arrays[key][present] = array[features.positions[present]]
    if missing.any():
        arrays["missing"] = missing
    save_npz(path, **arrays)


# ---------------------------------------------------------------- extraction from the loose crops

def _aligned_crop(paths: list, landmarks: np.ndarray, row: int) -> np.ndarray:
    return align_face(read_image_file(paths[row]), landmarks[row])


def _crop_file(paths: list, row: int) -> tuple:
    return paths[row], "whole file"


def aligned_crops(image_folder, names, landmarks: np.ndarray, rows: np.ndarray) -> ImageSequence:
    """The 112x112 crops of image rows `rows`, each aligned from its loose crop by its 5 landmarks."""
    paths = [os.path.join(image_folder, name) for name in names]
    return ImageSequence(rows, partial(_aligned_crop, paths, landmarks), locate=partial(_crop_file, paths))


def find_missing(image_folder, names, listed_in: str, skip: bool) -> np.ndarray:
    """bool [N]: which images are absent. Without `skip` the first absent one is an error."""
    missing = np.array([not os.path.isfile(os.path.join(image_folder, name)) for name in names], dtype=bool)
    if missing.any() and not skip:
        first = int(np.argmax(missing))
        raise DataFormatError(os.path.join(image_folder, names[first]),
                              f"image listed on line {first + 1} of {listed_in} not found ({int(missing.sum())} of "
                              f"{len(missing)} images are missing; --skip-missing leaves them out)")
    return missing


def default_feature_dir(checkpoint, set_name: str) -> str:
    """The store's folder without --feature-dir: SET_features/ beside the checkpoint."""
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), f"{set_name}_features")


def extract_ijb_features(meta, missing: np.ndarray, model, name: str, size: int, device, args
                         ) -> tuple[FeatureRows | None, str]:
    """(features of every present image, or None when --max-chunks stopped the extraction first;
    the store folder). Rows of missing images stay zero."""
    folder = args.feature_dir or default_feature_dir(args.checkpoint, meta.files.set_name)
    present = np.flatnonzero(~missing)
    images = aligned_crops(meta.files.images, meta.names, meta.landmarks, present)
    embed = Embedder(model, size, device, layout="separate", flip=not args.no_flip, precision=args.precision,
                     batch_size=args.batch_size)
    store = store_features(folder, meta.files.set_name, images, embed, checkpoint_identity(args.checkpoint, name, size),
                           chunk_size=args.chunk_size, names=[meta.names[row] for row in present],
                           max_new_chunks=args.max_chunks)
    if not store.complete:
        print(f"stopped after {args.max_chunks} chunks (--max-chunks); run the same command to resume",
              file=sys.stderr)
        return None, folder
    positions = None
    if missing.any():
        positions = np.full(len(missing), -1, dtype=np.int64)
        positions[present] = np.arange(len(present))
    return FeatureRows(store.arrays["features"], store.arrays.get("features_flip"), positions), folder
