"""ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Table 1) adapted
to 112x112 face crops.

Bottleneck units (conv1x1 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> conv1x1 (x4 channels) -> BN,
added to the identity or to a conv1x1 -> BN projection, then ReLU), 3, 4, 6, 3 units in stages of
64, 128, 256, 512 bottleneck channels. For faces the 7x7 stride-2 stem and the max-pool give way to
a conv3x3 stride-1 stem (64) and every stage starts with stride 2, so 112 -> 7 and the output is
2048x7x7, followed by the BN-Dropout-FC-BN output of `output_layer`.

The stride sits on the 3x3 conv of a unit, not on its first 1x1 as in the paper's Caffe release:
a strided 1x1 conv drops three quarters of its input positions unseen. This is torchvision's
"ResNet v1.5" layout and its names (`conv1..3`, `bn1..3`, `downsample`); parameter counts are
the same either way.
"""

from functools import partial

import torch
from torch import nn

from .output_layer import option_e_layers

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """Bottleneck ResNet for faces; float [B,3,112,112] -> [B, embedding_size]."""

    STAGE_CHANNELS = (64, 128, 256, 512)

    def __init__(self, units_per_stage, embedding_size: int = 512, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 64
        for index, (channels, units) in enumerate(zip(self.STAGE_CHANNELS, units_per_stage), 1):
            blocks = [Bottleneck(in_channels, channels, 2)]
            blocks += [Bottleneck(channels * EXPANSION, channels) for _ in range(units - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_channels = channels * EXPANSION
        self.bn2, self.dropout, self.fc, self.features = option_e_layers(
            in_channels, embedding_size, dropout)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


resnet50 = partial(ResNet, (3, 4, 6, 3))
