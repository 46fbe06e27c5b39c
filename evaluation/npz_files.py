"""The arrays of a features .npz checked once read (runtime.artifacts.open_npz reads it): every
malformed array is a DataFormatError naming the file and the array."""

from __future__ import annotations

import numpy as np

from runtime import DataFormatError


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
