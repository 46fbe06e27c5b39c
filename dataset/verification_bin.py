"""insightface's verification files (`lfw.bin`, `agedb_30.bin`, `cfp_fp.bin`, `cfp_ff.bin`, `calfw.bin`,
`cplfw.bin`, `vgg2_fp.bin`): a pickle of `(bins, issame_list)`, where `bins` lists 2N encoded images
(pair i is images 2i and 2i+1) and `issame_list` holds N booleans.

The files are pickles, and unpickling runs whatever callables a file names. We load them with an
unpickler that admits only what these files contain (bytes/str, lists, tuples, bools, and numpy bool
arrays in some copies): a file naming any other global, e.g. `os.system`, is refused before anything
of it runs. Files written by Python 2 store the images as `str`; `encoding='bytes'` keeps them bytes.
"""

import io
import os
import pickle
from functools import partial

import numpy as np
from tqdm import tqdm

from runtime.artifacts import atomic_file

from .errors import DataFormatError
from .image_codec import decode_image, encode_image
from .image_sequence import ImageSequence

# What numpy needs to rebuild a (bool) array or scalar, under its numpy 1 and numpy 2 module names.
_ALLOWED_GLOBALS = {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class _VerificationUnpickler(pickle.Unpickler):
    def __init__(self, handle, path):
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataFormatError(self.path, f"refusing to load: the pickle names the global "
                                             f"{module}.{name}, which a verification .bin never contains "
                                             "(the file is corrupt or malicious; nothing of it was run)")
        return super().find_class(module, name)


def _as_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise TypeError(type(item).__name__)


def read_bin_payloads(path) -> tuple[list[bytes], np.ndarray]:
    """(encoded images, issame bool [N]) without decoding the images."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataFormatError(path, "verification file not found") from None
    try:
        loaded = _VerificationUnpickler(io.BytesIO(data), path).load()
    except DataFormatError:
        raise
    except Exception as error:  # pickle raises many types for truncated or foreign data
        raise DataFormatError(path, f"not a verification .bin pickle ({type(error).__name__}: {error})") from None
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise DataFormatError(path, f"expected a pickled (bins, issame_list) pair, got {type(loaded).__name__}")
    bins, issame = loaded
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.dtype not in (np.bool_, np.int64, np.int32) or not np.isin(issame, (0, 1)).all():
        raise DataFormatError(path, f"issame_list must be N booleans, got dtype {issame.dtype} shape {issame.shape}")
    if len(bins) != 2 * len(issame):
        raise DataFormatError(path, f"{len(bins)} images for {len(issame)} pairs (need exactly 2 per pair)")
    payloads = []
    for i, item in enumerate(bins):
        try:
            payloads.append(_as_bytes(item))
        except TypeError as error:
            raise DataFormatError(path, f"entry is a {error}, not encoded image bytes", f"image {i}") from None
    return payloads, issame.astype(bool)


def _where(index: int) -> str:
    return f"image {index} (pair {index // 2})"


def _decode_payload(payloads: list, path, index: int) -> np.ndarray:
    return decode_image(payloads[index], path, _where(index))


def _bin_location(path, index: int) -> tuple:
    return path, _where(index)


def open_bin(path, on_size_mismatch: str = "error") -> tuple[ImageSequence, np.ndarray]:
    """A verification .bin -> (its images as an ImageSequence, issame bool [N]). The images stay
    JPEG-encoded in memory, a fraction of their decoded size, and are decoded a slice at a time."""
    payloads, issame = read_bin_payloads(path)
    images = ImageSequence(range(len(payloads)), partial(_decode_payload, payloads, path),
                           partial(_bin_location, path), on_size_mismatch)
    return images, issame


def load_bin(path, on_size_mismatch: str = "error", progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A verification .bin -> (images uint8 [2N,112,112,3] RGB, issame bool [N])."""
    encoded, issame = open_bin(path, on_size_mismatch)
    images = np.empty((len(encoded), 112, 112, 3), dtype=np.uint8)
    for start in tqdm(range(0, len(encoded), 1000), desc=f"decoding {os.path.basename(path)}", disable=not progress):
        images[start:start + 1000] = encoded[start:start + 1000]
    return images, issame


def write_bin(path, images: np.ndarray, issame, quality: int = 95) -> None:
    """Write (images RGB uint8 [2N,H,W,3], issame [N]) as insightface does: JPEG payloads, pickled.

    Written to a temporary file and renamed, so an interrupted write never leaves a broken .bin.
    """
    issame = [bool(flag) for flag in issame]
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; need exactly 2 per pair")
    bins = [encode_image(np.ascontiguousarray(image), quality) for image in images]
    with atomic_file(path) as handle:
        pickle.dump((bins, issame), handle, protocol=pickle.HIGHEST_PROTOCOL)
