"""IR networks: ResNets built from the ArcFace paper's improved residual unit (Deng et al.,
"ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019), with optional
attention on each residual branch.

- Improved residual unit: BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride s) -> BN, added to the
  identity or, when the shape changes, to conv1x1 (stride s) -> BN.
- Stem conv3x3 stride 1 (64) -> BN -> PReLU; four stages of 64, 128, 256, 512 channels whose first
  unit has stride 2 (112 -> 7); the BN-Dropout-FC-BN output of `output_layer`.
- Layout, strides and names follow insightface arcface_torch's `iresnet` (BN eps 1e-5, momentum
  0.1: PyTorch's defaults; the last BN's scale fixed at 1): the state_dict has the keys and shapes
  of its published r18/r34/r50/r100 checkpoints.
- `se`: squeeze-and-excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018) with
  reduction 16 and bias-free 1x1 convs, as TreB1eN's InsightFace_Pytorch `ir_se` nets have it.
- `cam`, `sam`, `cbam`: CBAM's channel attention, spatial attention, or both in that order (Woo et
  al., "CBAM: Convolutional Block Attention Module", ECCV 2018): a shared bias-free MLP (reduction
  16) over average- and max-pooled channels; a 7x7 conv over channel-average and channel-max maps
  (the paper's kernel; the old repository used 3x3).
The attention gate sits at the end of the residual branch, after its last BN and before the add.
`grad_checkpoint` recomputes each residual unit's activations in the backward pass instead of
storing them (backbone/checkpointing.py), which leaves the state_dict and the function unchanged.
"""

from functools import partial

import torch
from torch import nn

from runtime.errors import UnknownName

from .checkpointing import checkpointed
from .layers import PReLU, batchnorm_prelu
from .output_layer import option_e_layers

ATTENTION_REDUCTION = 16


class SqueezeExcitation(nn.Module):
    """Channel gate from globally average-pooled features through a bottleneck MLP."""

    def __init__(self, channels: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // ATTENTION_REDUCTION, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // ATTENTION_REDUCTION, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class ChannelAttention(nn.Module):
    """CBAM's channel gate: average- and max-pooled descriptors share one MLP; outputs are summed."""

    def __init__(self, channels: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.shared_mlp = nn.Sequential(
            nn.Conv2d(channels, channels // ATTENTION_REDUCTION, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // ATTENTION_REDUCTION, channels, 1, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        gate = self.shared_mlp(self.avg_pool(x)) + self.shared_mlp(self.max_pool(x))
        return x * self.sigmoid(gate)


class SpatialAttention(nn.Module):
    """CBAM's spatial gate: a 7x7 conv over the channel-average and channel-max maps."""

    def __init__(self, channels: int):
        # `channels` is unused (the gate is shared across channels); it is taken so that every
        # attention module is built the same way.
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=7, padding=3, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention, the order CBAM found best."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel_attention = ChannelAttention(channels)
        self.spatial_attention = SpatialAttention(channels)

    def forward(self, x):
        return self.spatial_attention(self.channel_attention(x))


ATTENTIONS = {"se": SqueezeExcitation, "cam": ChannelAttention, "sam": SpatialAttention, "cbam": CBAM}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IRBlock(nn.Module):
    """The improved residual unit; `attention_class` (one of ATTENTIONS) gates the branch."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, attention_class=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.prelu = PReLU(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn3 = nn.BatchNorm2d(channels)
        self.attention = attention_class(channels) if attention_class else None
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        branch = self.bn3(self.conv2(batchnorm_prelu(self.conv1(self.bn1(x)), self.bn2, self.prelu)))
        if self.attention is not None:
            branch = self.attention(branch)
        shortcut = x if self.downsample is None else self.downsample(x)
        return branch + shortcut


class IResNet(nn.Module):
    """IR network with `units_per_stage` units in its four stages and `attention` (a key of
    ATTENTIONS, or None) on every unit; float [B,3,112,112] -> [B, embedding_size].
    `grad_checkpoint` checkpoints every residual unit when training with grad."""

    STAGE_CHANNELS = (64, 128, 256, 512)

    def __init__(self, units_per_stage, attention: str | None, embedding_size: int = 512,
                 dropout: float = 0.0, grad_checkpoint: bool = False):
        super().__init__()
        self.grad_checkpoint = grad_checkpoint
        if attention is not None and attention not in ATTENTIONS:
            raise UnknownName("attention", attention, [*sorted(ATTENTIONS), None])
        attention_class = ATTENTIONS[attention] if attention else None
        self.conv1 = conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = PReLU(64)
        in_channels = 64
        for index, (channels, units) in enumerate(zip(self.STAGE_CHANNELS, units_per_stage), 1):
            blocks = [IRBlock(in_channels, channels, 2, attention_class)]
            blocks += [IRBlock(channels, channels, 1, attention_class) for _ in range(units - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_channels = channels
        self.bn2, self.dropout, self.fc, self.features = option_e_layers(in_channels, embedding_size, dropout)

    def forward(self, x):
        x = batchnorm_prelu(self.conv1(x), self.bn1, self.prelu)
        checkpointing = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for unit in stage:
                x = checkpointed(unit, x) if checkpointing else unit(x)
        x = self.dropout(self.bn2(x))
        return self.features(self.fc(torch.flatten(x, 1)))


UNITS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
    200: (6, 26, 60, 6),
}

# (units per stage, attention): the depth and the attention are what the registry name fixes; the
# caller chooses only embedding_size, dropout and grad_checkpoint.
ir18 = partial(IResNet, UNITS_PER_STAGE[18], None)
ir34 = partial(IResNet, UNITS_PER_STAGE[34], None)
ir50 = partial(IResNet, UNITS_PER_STAGE[50], None)
ir100 = partial(IResNet, UNITS_PER_STAGE[100], None)
ir152 = partial(IResNet, UNITS_PER_STAGE[152], None)
ir200 = partial(IResNet, UNITS_PER_STAGE[200], None)

ir_se18 = partial(IResNet, UNITS_PER_STAGE[18], "se")
ir_se34 = partial(IResNet, UNITS_PER_STAGE[34], "se")
ir_se50 = partial(IResNet, UNITS_PER_STAGE[50], "se")
ir_se100 = partial(IResNet, UNITS_PER_STAGE[100], "se")
ir_se152 = partial(IResNet, UNITS_PER_STAGE[152], "se")
ir_se200 = partial(IResNet, UNITS_PER_STAGE[200], "se")

ir_cam50 = partial(IResNet, UNITS_PER_STAGE[50], "cam")
ir_sam50 = partial(IResNet, UNITS_PER_STAGE[50], "sam")
ir_cbam50 = partial(IResNet, UNITS_PER_STAGE[50], "cbam")
ir_cam100 = partial(IResNet, UNITS_PER_STAGE[100], "cam")
ir_sam100 = partial(IResNet, UNITS_PER_STAGE[100], "sam")
ir_cbam100 = partial(IResNet, UNITS_PER_STAGE[100], "cbam")
