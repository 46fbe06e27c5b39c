"""Decoding and encoding of the image payloads inside packs, .bin files and image folders.

Everything this package yields is RGB uint8 HWC. OpenCV works in BGR, so the conversion happens here
and nowhere else. (The old repository fed BGR into its networks; weights trained there expect BGR.)
"""

import cv2
import numpy as np

from runtime.errors import UnknownName

from .errors import DataFormatError

IMAGE_SIZE = (112, 112)  # (height, width) of the aligned crops every public face pack ships
SIZE_POLICIES = ("error", "resize")


def decode_image(payload: bytes | memoryview | np.ndarray, path, where: str) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 HWC. Raises DataFormatError naming path and where."""
    buffer = np.frombuffer(payload, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        head = bytes(buffer[:8]).hex()
        raise DataFormatError(path, f"payload of {buffer.size} bytes is not a decodable image "
                                    f"(first bytes {head or 'none'})", where)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_bytes(path) -> bytes:
    """The encoded bytes of an image file, with a DataFormatError naming it if it can't be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise DataFormatError(path, f"cannot read image file ({error.strerror})") from error


def read_image_file(path) -> np.ndarray:
    """An image file on disk -> RGB uint8 HWC."""
    return decode_image(read_image_bytes(path), path, "whole file")


def encode_image(image: np.ndarray, quality: int = 95, fmt: str = ".jpg") -> bytes:
    """RGB uint8 HWC -> JPEG (or PNG with fmt='.png') bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 HWC image, got dtype {image.dtype} shape {image.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == ".jpg" else []
    ok, encoded = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return encoded.tobytes()


def check_size_policy(policy: str) -> None:
    if policy not in SIZE_POLICIES:
        raise UnknownName("size policy (on_size_mismatch)", policy, SIZE_POLICIES)


def payload_extension(payload: bytes) -> str:
    """The file extension of an encoded image: .png for PNG, else .jpg (the packs hold only these)."""
    return ".png" if payload.startswith(b"\x89PNG") else ".jpg"


def check_size(image: np.ndarray, policy: str, path, where: str,
               size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """Enforce the crop size: policy 'error' refuses another size, 'resize' resizes to it."""
    if image.shape[:2] == size:
        return image
    if policy == "resize":
        return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    if policy == "error":
        raise DataFormatError(path, f"image is {image.shape[0]}x{image.shape[1]}, expected "
                                    f"{size[0]}x{size[1]} (pass on_size_mismatch='resize' to resize)", where)
    raise UnknownName("size policy (on_size_mismatch)", policy, SIZE_POLICIES)
