"""BLUFR's configuration file (``blufr_lfw_config.mat``, from the BLUFR release): read with
scipy.io.loadmat, and written in the same layout for synthetic sets and tests.

Fields: ``imageList`` (N x 1 cell of image file names, LFW's ``Name_0001.jpg``), ``labels`` (N x 1
class labels), and ``trainIndex``, ``testIndex``, ``galIndex``, ``probIndex``: T x 1 cells (10 trials
in the release) of column vectors of MATLAB 1-based indices into imageList. A trial's gallery and
probe images are images of its test set (BLUFR's demo finds them there with ismember).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from runtime import DataFormatError, atomic_file

INDEX_FIELDS = ("trainIndex", "testIndex", "galIndex", "probIndex")
FIELDS = ("imageList", "labels") + INDEX_FIELDS


@dataclass(frozen=True)
class BlufrConfig:
    image_list: list           # N file names, as the config writes them
    labels: np.ndarray         # int64 [N]
    train: list                # per trial: 0-based int64 indices into image_list
    test: list
    gallery: list
    probes: list

    @property
    def n_trials(self) -> int:
        return len(self.test)


def _names(path, value) -> list:
    """The strings of imageList: a cell of char arrays, or a char matrix."""
    array = np.asarray(value)
    if array.dtype.kind == "U":
        return [str(item).rstrip() for item in array.reshape(-1)]
    if array.dtype != object:
        raise DataFormatError(path, f"imageList must be a cell array of file names, got {array.dtype} {array.shape}")
    names = []
    for position, item in enumerate(array.reshape(-1, order="F")):
        item = np.asarray(item).reshape(-1)
        if item.dtype.kind != "U" or item.size != 1:
            raise DataFormatError(path, f"imageList entry {position + 1} is not a file name "
                                        f"({item.dtype} {item.shape})")
        names.append(str(item[0]))
    return names


def _integers(path, key, value, what) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise DataFormatError(path, f"{key}: {what} must be a non-empty numeric vector, got {array.dtype} "
                                    f"{array.shape}")
    if array.ndim > 2 or (array.ndim == 2 and min(array.shape) != 1):
        raise DataFormatError(path, f"{key}: {what} must be a vector, got shape {array.shape}")
    values = array.reshape(-1).astype(np.float64)
    if not (np.isfinite(values) & (values == np.round(values))).all():
        raise DataFormatError(path, f"{key}: {what} holds a value that is not an integer")
    return values.astype(np.int64)


def _trials(path, key, value, n_images: int) -> list:
    """The 0-based index vectors of a T x 1 cell of 1-based indices."""
    cells = np.asarray(value)
    if cells.dtype != object or cells.ndim != 2 or min(cells.shape) != 1:
        raise DataFormatError(path, f"{key} must be a T x 1 cell array of index vectors (one per trial), "
                                    f"got {cells.dtype} of shape {cells.shape}")
    trials = []
    for trial, cell in enumerate(cells.reshape(-1), 1):
        indices = _integers(path, key, cell, f"trial {trial}'s indices")
        outside = indices[(indices < 1) | (indices > n_images)]
        if outside.size:
            raise DataFormatError(path, f"{key}: trial {trial} holds index {int(outside[0])}, outside 1..{n_images} "
                                        "(imageList's MATLAB indices)")
        trials.append(indices - 1)
    return trials


def read_blufr_config(path) -> BlufrConfig:
    """The config's fields, checked: every field present, every index within imageList, as many
    trials in every index field, each trial's gallery and probe images inside its test set."""
    from scipy.io import loadmat  # only the BLUFR scripts need scipy.io
    if not os.path.isfile(path):
        raise DataFormatError(path, "BLUFR config file not found")
    try:
        content = loadmat(path)
    except NotImplementedError as error:  # MATLAB v7.3 files are HDF5
        raise DataFormatError(path, f"not readable by scipy.io.loadmat ({error}); save it with -v7") from None
    except Exception as error:  # loadmat raises several types for foreign or damaged files
        raise DataFormatError(path, f"not a MATLAB .mat file ({type(error).__name__}: {error})") from None
    missing = [key for key in FIELDS if key not in content]
    if missing:
        held = sorted(key for key in content if not key.startswith("__"))
        raise DataFormatError(path, f"no field {', '.join(missing)} (it holds {', '.join(held) or 'nothing'}; "
                                    f"a BLUFR config holds {', '.join(FIELDS)})")
    names = _names(path, content["imageList"])
    labels = _integers(path, "labels", content["labels"], "the class labels")
    if labels.size != len(names):
        raise DataFormatError(path, f"labels holds {labels.size} values for the {len(names)} images of imageList")
    trials = {key: _trials(path, key, content[key], len(names)) for key in INDEX_FIELDS}
    counts = {key: len(value) for key, value in trials.items()}
    if len(set(counts.values())) != 1:
        raise DataFormatError(path, "the index fields hold different numbers of trials: "
                                    + ", ".join(f"{key} {count}" for key, count in counts.items()))
    for trial, test in enumerate(trials["testIndex"], 1):
        if np.unique(test).size != test.size:
            raise DataFormatError(path, f"testIndex: trial {trial} lists an image twice")
        for key in ("galIndex", "probIndex"):
            outside = np.setdiff1d(trials[key][trial - 1], test)
            if outside.size:
                raise DataFormatError(path, f"{key}: trial {trial}'s image {int(outside[0]) + 1} is not in its "
                                            "testIndex (gallery and probes are parts of the test set)")
    return BlufrConfig(names, labels, trials["trainIndex"], trials["testIndex"], trials["galIndex"],
                       trials["probIndex"])


def _cell(vectors) -> np.ndarray:
    cell = np.empty((len(vectors), 1), dtype=object)
    for row, vector in enumerate(vectors):
        cell[row, 0] = np.asarray(vector, dtype=np.float64).reshape(-1, 1) + 1.0  # MATLAB's 1-based doubles
    return cell


def write_blufr_config(path, image_list, labels, train, test, gallery, probes) -> None:
    """A config in the release's layout from 0-based index vectors (one per trial)."""
    from scipy.io import savemat
    names = np.empty((len(image_list), 1), dtype=object)
    for row, name in enumerate(image_list):
        names[row, 0] = name
    with atomic_file(path) as handle:
        savemat(handle, {"imageList": names, "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1),
                         "trainIndex": _cell(train), "testIndex": _cell(test), "galIndex": _cell(gallery),
                         "probIndex": _cell(probes)})
