"""The three networks of MTCNN: Zhang, Zhang, Li and Qiao, "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", IEEE Signal Processing Letters 2016.

P-Net is fully convolutional (a 12x12 window, stride 2) and proposes faces over an image pyramid;
R-Net (24x24 crops) rejects most proposals and refines the boxes; O-Net (48x48 crops) refines them
again and places five landmarks. The layer names and shapes are those of the pretrained weights the
`facenet-pytorch` wheel ships (converted from the authors' Caffe models by way of TensorFlow), which
load here strictly. Inputs are RGB, NCHW, normalised as (x - 127.5) / 128.

The dense layers read their input flattened in (width, height, channel) order, the order of the
TensorFlow graph the weights went through; `_flatten_as_trained` does that transposition.
"""

import importlib.util
import os

import torch
from torch import nn

from runtime.artifacts import load_torch_file

from .errors import DataFormatError

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = "run `make setup` (it installs facenet-pytorch==2.6.0 with --no-deps for its MTCNN weights)"


def _flatten_as_trained(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


def _pool(x: torch.Tensor, kernel: int) -> torch.Tensor:
    return nn.functional.max_pool2d(x, kernel, 2, ceil_mode=True)  # ceil: a partial last window counts


class PNet(nn.Module):
    """[N, 3, H, W] -> (box offsets [N, 4, h, w], face probability [N, h, w]) with h = ceil((H-2)/2) - 4:
    one output cell per 12x12 window at stride 2 (the last one reaching a pixel past an odd side)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not-face logits
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets, in units of the window's size

    def forward(self, x, outside=()):
        """`outside`: (row, end row, column, end column) rectangles of conv1's output that the first
        max-pool must not see, as if the image ended there. With several images packed on one canvas
        (dataset/detect.py packs the pyramid so), the row and column just past each odd side are
        those, and each image then pools as it would alone."""
        x = self.prelu1(self.conv1(x))
        if len(outside):
            below = self._below_conv1()
            for row, end_row, col, end_col in outside:
                x[:, :, row:end_row, col:end_col] = below
        x = _pool(x, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]

    def _below_conv1(self) -> float:
        """A value under every prelu1(conv1(x)) for inputs in [-1, 1] (P-Net's normalised pixels), so a
        max-pool never picks it where a real output is in its window. Finite, unlike -inf, whose
        products in conv2 would fill the cells outside every image with NaN."""
        bound = (self.conv1.weight.abs().sum(dim=(1, 2, 3)) + self.conv1.bias.abs()).max()
        return -float(bound * max(1.0, float(self.prelu1.weight.abs().max()))) - 1.0


class RNet(nn.Module):
    """[N, 3, 24, 24] -> (box offsets [N, 4], face probability [N])."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(64 * 3 * 3, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = _pool(self.prelu1(self.conv1(x)), 3)
        x = _pool(self.prelu2(self.conv2(x)), 3)
        x = self.prelu4(self.dense4(_flatten_as_trained(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """[N, 3, 48, 48] -> (box offsets [N, 4], landmarks [N, 10] (five x, then five y, as fractions
    of the box), face probability [N])."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(128 * 3 * 3, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = _pool(self.prelu1(self.conv1(x)), 3)
        x = _pool(self.prelu2(self.conv2(x)), 3)
        x = _pool(self.prelu3(self.conv3(x)), 2)
        x = self.prelu5(self.dense5(_flatten_as_trained(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


def weights_folder() -> str:
    """The folder holding pnet.pt, rnet.pt and onet.pt: the installed facenet-pytorch's data folder,
    found without importing facenet_pytorch (its import pulls in torchvision and PIL code we don't use)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise DataFormatError("facenet_pytorch/data/pnet.pt", f"MTCNN weights not installed: {INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_nets(folder: str | None = None) -> tuple[PNet, RNet, ONet]:
    """(P-Net, R-Net, O-Net) in eval mode on the CPU, each loaded strictly from `folder` (default:
    weights_folder()). The files are read with weights_only=True: a state dict, no code."""
    folder = weights_folder() if folder is None else os.fspath(folder)
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, WEIGHT_FILES):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataFormatError(path, f"MTCNN weights not found: {INSTALL_HINT}")
        try:
            net.load_state_dict(load_torch_file(path), strict=True)
        except Exception as error:  # a foreign file: ArtifactError, or one of the many types load_state_dict raises
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise DataFormatError(path, f"not the MTCNN {name[:4]} state dict ({type(error).__name__}: "
                                        f"{first_line}); {INSTALL_HINT}") from None
        net.eval().requires_grad_(False)
    return nets
