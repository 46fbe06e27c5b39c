"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices", CCBR 2018, Table 1), for 112x112 crops.

conv3x3 stride 2 (64) -> depthwise conv3x3 (64) -> bottlenecks (t, c, n, s) = (2, 64, 5, 2),
(4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1) -> conv1x1 (512) -> global depthwise
conv 7x7 (linear) -> linear 1x1 conv to the embedding. Every conv is followed by BN; PReLU is the
non-linearity; the bottleneck is MobileNetV2's inverted residual (expand 1x1, depthwise 3x3 with
the stride, linear projection 1x1), with the identity added when stride is 1 and channels match.

Attribute names follow the public PyTorch ports (TreB1eN's InsightFace_Pytorch): `conv1`,
`conv2_dw`, `conv_6_sep`, `conv_6_dw`, `linear`, `bn`; each bottleneck has `conv`, `conv_dw` and
`project`, each conv unit `conv`, `bn` (and `prelu`). Their bottlenecks are grouped into
`conv_23`, `conv_3.model`, `conv_34`, ...; here they are one flat `bottlenecks` sequence in table
order, so converting their checkpoints is a renumbering of that one prefix.
"""

import torch
from torch import nn

from .layers import DepthwiseConv2d, PointwiseConv2d, PReLU, batchnorm_prelu

# (expansion t, output channels c, repeats n, first stride s), the paper's Table 1.
BOTTLENECK_TABLE = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBN(nn.Module):
    """Bias-free conv followed by BN, with PReLU unless `linear`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, linear: bool = False):
        super().__init__()
        if groups == in_channels > 1:
            conv = DepthwiseConv2d
        elif kernel_size == stride == groups == 1:
            conv = PointwiseConv2d
        else:
            conv = nn.Conv2d
        self.conv = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = None if linear else PReLU(out_channels)

    def forward(self, x):
        x = self.conv(x)
        return self.bn(x) if self.prelu is None else batchnorm_prelu(x, self.bn, self.prelu)


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 -> depthwise 3x3 (stride) -> linear project 1x1."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int):
        super().__init__()
        hidden = in_channels * expansion
        self.conv = ConvBN(in_channels, hidden)
        self.conv_dw = ConvBN(hidden, hidden, 3, stride=stride, padding=1, groups=hidden)
        self.project = ConvBN(hidden, out_channels, linear=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """float [B,3,112,112] -> [B, embedding_size]."""

    def __init__(self, embedding_size: int = 128):
        super().__init__()
        self.conv1 = ConvBN(3, 64, 3, stride=2, padding=1)
        self.conv2_dw = ConvBN(64, 64, 3, padding=1, groups=64)
        blocks, in_channels = [], 64
        for expansion, channels, repeats, stride in BOTTLENECK_TABLE:
            for repeat in range(repeats):
                blocks.append(Bottleneck(in_channels, channels, expansion, stride if repeat == 0 else 1))
                in_channels = channels
        self.bottlenecks = nn.Sequential(*blocks)
        self.conv_6_sep = ConvBN(in_channels, 512)
        # Global depthwise conv: a learnt per-channel weighting of the 7x7 positions, which the
        # paper prefers to global average pooling because face crops are not translation invariant.
        self.conv_6_dw = ConvBN(512, 512, 7, groups=512, linear=True)
        # The paper's final linear 1x1 conv acts on a 1x1 map, so it is a bias-free Linear; kept as
        # one so that its weight has the [D, 512] shape public checkpoints store.
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x):
        x = self.conv_6_sep(self.bottlenecks(self.conv2_dw(self.conv1(x))))
        return self.bn(self.linear(torch.flatten(self.conv_6_dw(x), 1)))

