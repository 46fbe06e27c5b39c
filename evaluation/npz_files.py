"""Features .npz files read back: every missing, unreadable or malformed array is a DataFormatError
naming the file and the array."""

from __future__ import annotations

import os

import numpy as np

from runtime import DataFormatError


def open_npz(path, required: tuple, optional: tuple = ()) -> dict:
    """{key: array} of an .npz holding every `required` key (and whichever `optional` ones it has)."""
    if not os.path.isfile(path):
        raise DataFormatError(path, "features file not found")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            missing = [key for key in required if key not in keys]
            if missing:
                raise DataFormatError(path, f"no array {', '.join(missing)} in the archive (it holds "
                                            f"{', '.join(sorted(keys)) or 'nothing'}; needed: {', '.join(required)})")
            return {key: archive[key] for key in required + optional if key in keys}
    except DataFormatError:
        raise
    except Exception as error:  # np.load raises several types for non-zip or damaged files
        raise DataFormatError(path, f"not a readable .npz archive ({type(error).__name__}: {error})") from None


def check_float_matrix(path, key, array, rows: int | None = None) -> np.ndarray:
    """`array` itself once it is a finite float [rows, D] matrix."""
    if not np.issubdtype(array.dtype, np.floating) or array.ndim != 2 or array.shape[1] < 1:
        raise DataFormatError(path, f"{key} must be a float [rows, D] array, got dtype {array.dtype} "
                                    f"shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise DataFormatError(path, f"{key} has {array.shape[0]} rows, expected {rows}")
    bad = np.nonzero(~np.isfinite(array).all(axis=1))[0]
    if bad.size:
        raise DataFormatError(path, f"{key} row {int(bad[0])} holds a NaN or infinite value")
    return array


def check_string_vector(path, key, array, rows: int) -> list:
    """The strings of a [rows] string array, as a list."""
    if array.dtype.kind != "U" or array.shape != (rows,):
        raise DataFormatError(path, f"{key} must be {rows} strings, got dtype {array.dtype} shape {array.shape}")
    return array.tolist()
