"""From (RGB uint8 HWC image, label) samples to network input.

Workers hand uint8 CHW tensors to the main process (a quarter of float32's bytes to pin and copy);
`normalize_images` turns a batch into the float input on the device, in one place for training and
evaluation alike.
"""

import numpy as np
import torch

from .errors import DataFormatError

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a fast, well-spread integer hash."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)


def flip_coin(seed: int, epoch: int, index: int) -> bool:
    """Whether sample `index` is mirrored in `epoch`: a pure function of its arguments, so a resumed
    run, or any number of DataLoader workers, makes the same choices as an uninterrupted one."""
    return bool(_mix64(_mix64(_mix64(seed & _MASK64) ^ epoch) ^ index) & 1)


_FATAL = "!"  # first character of a report whose bad record was not replaced
_SEPARATOR = "\x1f"  # between the fields of a record (path, where, problem)


def encode_bad_records(errors: list, fatal: bool) -> str:
    """DataFormatErrors as one string, so that DataLoader's default collate carries them to the main
    process beside the batch (a list of strings)."""
    if not errors:
        return ""
    text = "\n".join(_SEPARATOR.join((e.path, e.where or "", e.problem)) for e in errors)
    return (_FATAL if fatal else "") + text


def decode_bad_records(text: str) -> tuple[list, bool]:
    """(DataFormatErrors, fatal) of `encode_bad_records`' string."""
    if not text:
        return [], False
    fatal = text.startswith(_FATAL)
    records = [line.split(_SEPARATOR) for line in text[len(_FATAL) if fatal else 0:].split("\n")]
    return [DataFormatError(path, problem, where or None) for path, where, problem in records], fatal


class TrainingView(torch.utils.data.Dataset):
    """Wraps an (image, label) source; `view[(epoch, index)]` (or `view[index]`, epoch 0) returns
    (uint8 CHW tensor, label, bad records), mirrored horizontally by `flip_coin` when `flip` is on.

    A record the source cannot read (DataFormatError) never raises inside a DataLoader worker, where
    the message would reach the user buried in a worker traceback: with `skip_corrupt` it is replaced
    by the next readable record; without, a blank image stands in. Either way the third element (a
    string, `decode_bad_records` reads it) tells the main process, which reports or stops.
    """

    def __init__(self, source, flip: bool = True, seed: int = 0, skip_corrupt: bool = False):
        self.source = source
        self.flip = flip
        self.seed = seed
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, index: int):
        errors = []
        for attempt in range(len(self.source) if self.skip_corrupt else 1):
            try:
                image, label = self.source[(index + attempt) % len(self.source)]
                return image, label, encode_bad_records(errors, fatal=False)
            except DataFormatError as error:
                errors.append(error)
        if self.skip_corrupt:
            errors.append(DataFormatError(getattr(self.source, "rec_path", "training data"),
                                          "no readable image in the whole training set"))
        return np.zeros((112, 112, 3), np.uint8), 0, encode_bad_records(errors, fatal=True)

    def __getitem__(self, key) -> tuple[torch.Tensor, int, str]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label, bad = self._read(index)
        if self.flip and flip_coin(self.seed, epoch, index):
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label, bad


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B,3,H,W] (or [B,H,W,3], numpy accepted) RGB -> (x/255 - 0.5)/0.5 in `dtype`."""
    images = torch.as_tensor(images)
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    return images.to(dtype).mul_(2.0 / 255.0).sub_(1.0)
