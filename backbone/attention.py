"""Residual Attention Networks (Wang et al., "Residual Attention Network for Image Classification",
CVPR 2017): Attention-56 and Attention-92, adapted to 112x112 face crops.

- Residual unit: pre-activation bottleneck (He et al., ECCV 2016): BN-ReLU-conv1x1 (C/4) -> BN-ReLU-
  conv3x3 (C/4, stride) -> BN-ReLU-conv1x1 (C), plus the identity or, when the shape changes, a
  strided conv1x1 of the pre-activated input.
- Attention module (p=1, t=2, r=1): one unit, then a trunk of two units and a soft-mask branch
  side by side, output (1 + mask) * trunk, then one more unit. The mask branch goes bottom-up with
  max-pool + unit per level (two units at the lowest), keeping a skip unit at each level, and
  top-down with bilinear upsampling + skip + unit, then upsamples to the trunk's size and ends in
  BN-ReLU-conv1x1-BN-ReLU-conv1x1-sigmoid. Stage 1, 2, 3 modules have 3, 2, 1 max-pool levels.
- Stages 1/2/3 hold 1/1/1 modules for Attention-56 and 1/2/3 for Attention-92 (256, 512, 1024
  channels); stage 4 is three 2048-channel units.
The mask branch wiring (which tensors the skips and upsamplings add) follows the authors' released
Attention-56 Caffe model.

Adaptation to 112x112: the 7x7 stride-2 stem and max-pool become a conv3x3 stride 2 (64) + BN +
ReLU, so stage 1 runs at 56x56 as in the paper (room for its three mask down-samplings, 56 -> 7)
and the three strided stages bring it to 7x7. The 2048x7x7 map then goes through the
BN-Dropout-FC-BN output of `output_layer` instead of average pooling and a classifier.
"""

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .output_layer import option_e_layers

STAGE_CHANNELS = (256, 512, 1024, 2048)
MASK_DEPTHS = (3, 2, 1)  # max-pool levels in the mask branch of stage 1, 2, 3 modules


class PreActBottleneck(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        channels = out_channels // 4
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x):
        activated = self.relu(self.bn1(x))
        out = self.conv1(activated)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + (x if self.shortcut is None else self.shortcut(activated))


def upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # Corners aligned, as the Caffe "Interp" layer of the released model interpolates.
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class SoftMaskBranch(nn.Module):
    """Bottom-up top-down mask with `depth` max-pool levels; returns a [0, 1] map like its input."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.down = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth))
        self.bottom = PreActBottleneck(channels, channels)
        self.skips = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth - 1))
        self.up = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth - 1))
        self.to_mask = nn.Sequential(
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
            nn.Sigmoid())

    def forward(self, x):
        out, skips = x, []
        for level, down in enumerate(self.down):
            out = down(self.pool(out))
            if level < len(self.skips):
                skips.append(self.skips[level](out))
        out = self.bottom(out)
        for level in reversed(range(len(self.up))):
            out = self.up[level](upsample_to(out, skips[level]) + skips[level])
        return self.to_mask(upsample_to(out, x))


class AttentionModule(nn.Module):
    def __init__(self, channels: int, mask_depth: int):
        super().__init__()
        self.pre = PreActBottleneck(channels, channels)
        self.trunk = nn.Sequential(PreActBottleneck(channels, channels), PreActBottleneck(channels, channels))
        self.mask = SoftMaskBranch(channels, mask_depth)
        self.post = PreActBottleneck(channels, channels)

    def forward(self, x):
        x = self.pre(x)
        trunk = self.trunk(x)
        # Attention residual learning: a mask near 0 leaves the trunk as it is, so stacking modules
        # does not fade features out the way repeated products with [0, 1] masks would.
        return self.post((1 + self.mask(x)) * trunk)


class ResidualAttentionNet(nn.Module):
    """float [B,3,112,112] -> [B, embedding_size]; `modules_per_stage` counts stage 1-3 modules."""

    def __init__(self, modules_per_stage, embedding_size: int = 512, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        in_channels = 64
        for index, (channels, modules, depth) in enumerate(
                zip(STAGE_CHANNELS, modules_per_stage, MASK_DEPTHS), 1):
            stage = [PreActBottleneck(in_channels, channels, 1 if index == 1 else 2)]
            stage += [AttentionModule(channels, depth) for _ in range(modules)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            in_channels = channels
        self.layer4 = nn.Sequential(PreActBottleneck(in_channels, STAGE_CHANNELS[3], 2),
                                    PreActBottleneck(STAGE_CHANNELS[3], STAGE_CHANNELS[3]),
                                    PreActBottleneck(STAGE_CHANNELS[3], STAGE_CHANNELS[3]))
        self.bn2, self.dropout, self.fc, self.features = option_e_layers(
            STAGE_CHANNELS[3], embedding_size, dropout)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


attention56 = partial(ResidualAttentionNet, (1, 1, 1))
attention92 = partial(ResidualAttentionNet, (1, 2, 3))
