"""SphereFace's residual networks (Liu et al., "SphereFace: Deep Hypersphere Embedding for Face
Recognition", CVPR 2017, Table 2): 20 and 64 layers.

Four stages; each opens with a conv3x3 stride 2 (64, 128, 256, 512 channels) + PReLU and goes on
with residual units of two conv3x3 + PReLU added to the identity: 1, 2, 4, 1 units (20 layers) or
3, 8, 16, 3 (64 layers). The 512 x 7 x 7 map (SphereFace's 112x96 crops gave 7x6) is flattened
into the paper's fully connected embedding layer. There is no batch norm anywhere, as in the
paper, and no BN after the FC either: the margin heads normalise the embedding themselves.

Initialisation follows the released Caffe model (sphereface_model.prototxt): Caffe's "xavier"
(uniform, variance 1 / fan_in) for the strided convs and the FC, with zero biases, and Gaussian
std 0.01 for the convs inside residual units, whose biases Caffe pins at zero (lr_mult 0), hence
bias-free here. Every unit so starts close to the identity: without batch norm this is what keeps
the deep net trainable from scratch.
"""

import math
from functools import partial

import torch
from torch import nn

from .layers import PReLU

STAGE_CHANNELS = (64, 128, 256, 512)
FEATURE_MAP_SIZE = 7


def caffe_xavier_(weight: torch.Tensor) -> None:
    """Caffe's xavier filler: uniform in +-sqrt(3 / fan_in) (PyTorch's xavier uses fan_in + fan_out)."""
    bound = math.sqrt(3.0 / weight[0].numel())
    nn.init.uniform_(weight, -bound, bound)


class SphereResidualUnit(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = PReLU(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, std=0.01)

    def forward(self, x):
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def downsampling(in_channels: int, out_channels: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
    caffe_xavier_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, PReLU(out_channels))


class SphereNet(nn.Module):
    """float [B,3,112,112] -> [B, embedding_size]; `layer1..4` are [downsampling, units...]."""

    def __init__(self, units_per_stage, embedding_size: int = 512):
        super().__init__()
        in_channels = 3
        for index, (channels, units) in enumerate(zip(STAGE_CHANNELS, units_per_stage), 1):
            stage = [downsampling(in_channels, channels)]
            stage += [SphereResidualUnit(channels) for _ in range(units)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        self.fc = nn.Linear(in_channels * FEATURE_MAP_SIZE * FEATURE_MAP_SIZE, embedding_size)
        caffe_xavier_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x, 1))


spherenet20 = partial(SphereNet, (1, 2, 4, 1))
spherenet64 = partial(SphereNet, (3, 8, 16, 3))
