"""From (RGB uint8 HWC image, label) samples to network input.

Workers hand uint8 CHW tensors to the main process (a quarter of float32's bytes to pin and copy);
`normalize_images` turns a batch into the float input on the device, in one place for training and
evaluation alike.
"""

import numpy as np
import torch

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


class TrainingView(torch.utils.data.Dataset):
    """Wraps an (image, label) source; `view[(epoch, index)]` (or `view[index]`, epoch 0) returns
    (uint8 CHW tensor, label), mirrored horizontally by `flip_coin` when `flip` is on."""

    def __init__(self, source, flip: bool = True, seed: int = 0):
        self.source = source
        self.flip = flip
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        image, label = self.source[index]
        if self.flip and flip_coin(self.seed, epoch, index):
            image = image[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), label


def normalize_images(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B,3,H,W] (or [B,H,W,3], numpy accepted) RGB -> (x/255 - 0.5)/0.5 in `dtype`."""
    images = torch.as_tensor(images)
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    return images.to(dtype).mul_(2.0 / 255.0).sub_(1.0)
