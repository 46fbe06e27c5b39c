"""Tests of the backbone networks in ``backbone/`` and of the cost counters in
``backbone/complexity.py``.

Every registered network is built on the CPU. One network per block type takes a train-mode
forward and backward pass; its deeper siblings run one eval-mode image, and the deepest (100 layers
and more with attention, 152 and 200 layers, Attention-92, ViT-S/B/L/H), whose blocks the others
already run, are only built and parameter-counted (the ViTs in tests/test_vit.py, on the meta
device), to keep the file at seconds on two cores. Parameter counts are checked against published
figures (insightface's iresnet50/100, the MobileFaceNet and Residual Attention papers,
torchvision's resnet50) and, for the depths nobody publishes, against a closed-form count of the
architecture that the published ones anchor.
"""

import re

import pytest
import torch
from torch import nn

from backbone import BACKBONES, build_backbone
from backbone.complexity import count_macs, count_parameters, fp32_size_bytes
from backbone.iresnet import IResNet
from runtime import UnknownName

EMBEDDING_SIZE = 64  # not any network's default, so the option demonstrably reaches the output

# One train-mode pass per distinct block: MobileFaceNet's bottleneck, the IR unit, SE, CBAM (its
# channel and spatial gates are the cam/sam modules), ResNet's bottleneck, the attention module,
# SphereFace's unit and the transformer block.
TRAIN_CHECKED = ["mobilefacenet", "ir18", "ir_se18", "ir_cbam50", "resnet50", "attention56",
                 "spherenet20", "vit_t"]
EVAL_CHECKED = ["ir34", "ir50", "ir100", "ir_se34", "ir_se50", "ir_cam50", "ir_sam50", "spherenet64"]
# Built and parameter-counted only (test_ir_parameters_follow_the_architecture,
# test_attention92_adds_one_stage2_and_two_stage3_modules, tests/test_vit.py's
# test_vit_parameters_follow_the_architecture); their blocks run in the nets above.
BUILD_CHECKED = ["ir152", "ir200", "ir_se100", "ir_se152", "ir_se200", "ir_cam100", "ir_sam100",
                 "ir_cbam100", "attention92", "vit_s", "vit_b", "vit_l", "vit_h"]


def faces(batch: int) -> torch.Tensor:
    """A deterministic normalised input batch in the range real crops have, [-1, 1]."""
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1


def test_every_backbone_is_checked_exactly_once():
    checked = TRAIN_CHECKED + EVAL_CHECKED + BUILD_CHECKED
    assert sorted(checked) == sorted(BACKBONES)
    assert all(name.startswith(("ir", "vit_")) or name == "attention92" for name in BUILD_CHECKED)


# The heaviest of them run in the full tier only (`make test`); MobileFaceNet's pass stays in the fast
# tier, whose first bf16 CPU backward also builds the fused PReLU kernel.
SLOW_TRAIN_CHECKED = {"ir18", "ir_cbam50", "resnet50", "attention56"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TRAIN_CHECKED else name
                                  for name in TRAIN_CHECKED])
def test_train_forward_backward(name):
    torch.manual_seed(0)
    model = BACKBONES[name](embedding_size=EMBEDDING_SIZE).train()
    # Three images, not two: with two, a train-mode BatchNorm1d output is +-1 whatever its input,
    # so no gradient would reach the body and the check below would be empty.
    embeddings = model(faces(3))
    assert embeddings.shape == (3, EMBEDDING_SIZE)
    assert torch.isfinite(embeddings).all()
    projection = torch.randn(EMBEDDING_SIZE, generator=torch.Generator().manual_seed(1))
    (embeddings * projection).sum().backward()
    # The BN-Dropout-FC-BN output keeps insightface's last-BN scale fixed at 1; nothing else is frozen.
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ([] if name in ("mobilefacenet", "spherenet20", "vit_t") else ["features.weight"])
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{parameter_name} is not used in the forward pass"
            assert torch.isfinite(parameter.grad).all(), parameter_name
        else:
            assert parameter.grad is None and torch.equal(parameter, torch.ones_like(parameter))
    stem = next(p for p in model.parameters() if p.dim() == 4)
    assert stem.grad.abs().sum() > 0, "no gradient reaches the first convolution"


@pytest.mark.parametrize("name", EVAL_CHECKED)
def test_eval_forward(name):
    torch.manual_seed(0)
    model = BACKBONES[name](embedding_size=EMBEDDING_SIZE).eval()
    with torch.no_grad():
        embeddings = model(faces(1))
    assert embeddings.shape == (1, EMBEDDING_SIZE)
    assert torch.isfinite(embeddings).all()
    assert embeddings.abs().sum() > 0


def test_eval_mode_is_deterministic_and_per_image():
    model = BACKBONES["mobilefacenet"](embedding_size=EMBEDDING_SIZE).eval()
    batch = faces(4)
    with torch.no_grad():
        together = model(batch)
        alone = model(batch[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-4, atol=1e-5)


def test_network_follows_the_callers_dtype():
    model = BACKBONES["mobilefacenet"](embedding_size=EMBEDDING_SIZE).eval().double()
    with torch.no_grad():
        embeddings = model(faces(1).double())
    assert embeddings.dtype == torch.float64


# ---- parameter counts and MACs against published figures ------------------------------------

def parameters_millions(name, embedding_size=512):
    return count_parameters(BACKBONES[name](embedding_size=embedding_size)) / 1e6


def test_mobilefacenet_parameters_and_macs():
    # The paper: 0.99 M parameters, 221 M MAdds at 128-d. Measured here: 1,003,136 parameters (BN
    # and PReLU included) and 220,965,376 MACs.
    model = BACKBONES["mobilefacenet"](embedding_size=128)
    assert 0.99 * 0.99 <= count_parameters(model) / 1e6 <= 1.00 * 1.01
    assert count_macs(model) / 1e9 == pytest.approx(0.221, rel=0.05)
    assert model(faces(2)).shape == (2, 128)


@pytest.mark.parametrize("name, millions", [("ir50", 43.59), ("ir100", 65.16)])
def test_ir_parameters_match_insightface(name, millions):
    assert parameters_millions(name) == pytest.approx(millions, rel=0.01)


def test_ir50_macs_match_insightface():
    # insightface arcface_torch's model table: r50 6.3 GFLOPs (ptflops MACs). Measured: 6.309 G.
    assert count_macs(BACKBONES["ir50"](embedding_size=512)) / 1e9 == pytest.approx(6.3, rel=0.05)


def ir_closed_form_parameters(units_per_stage, attention, embedding_size):
    """Parameters of an IR net counted by hand from its definition (ArcFace paper, insightface)."""
    def attention_parameters(channels):
        mlp = 2 * channels * (channels // 16)
        spatial = 2 * 7 * 7
        return {None: 0, "se": mlp, "cam": mlp, "sam": spatial, "cbam": mlp + spatial}[attention]

    total = 3 * 64 * 9 + 2 * 64 + 64  # stem conv, BN, PReLU
    in_channels = 64
    for channels, units in zip((64, 128, 256, 512), units_per_stage):
        # first unit: BN(in), conv3x3 in->c, BN, PReLU, conv3x3 c->c, BN, 1x1 projection + BN
        total += 2 * in_channels + 9 * in_channels * channels + 2 * channels + channels
        total += 9 * channels * channels + 2 * channels + in_channels * channels + 2 * channels
        total += (units - 1) * (2 * channels + 18 * channels * channels + 5 * channels)
        total += units * attention_parameters(channels)
        in_channels = channels
    return total + 2 * 512 + 512 * 49 * embedding_size + embedding_size + 2 * embedding_size


IR_UNITS_PER_STAGE = {"18": (2, 2, 2, 2), "34": (3, 4, 6, 3), "50": (3, 4, 14, 3),
                      "100": (3, 13, 30, 3), "152": (3, 8, 36, 3), "200": (6, 26, 60, 6)}


@pytest.mark.parametrize("name", [n for n in BACKBONES if n.startswith("ir")])
def test_ir_parameters_follow_the_architecture(name):
    attention, depth = re.fullmatch(r"ir(?:_(se|cam|sam|cbam))?(\d+)", name).groups()
    model = BACKBONES[name](embedding_size=EMBEDDING_SIZE)
    expected = ir_closed_form_parameters(IR_UNITS_PER_STAGE[depth], attention, EMBEDDING_SIZE)
    assert count_parameters(model) == expected


def test_resnet50_body_matches_torchvision_resnet50():
    # Swap our 3x3 stem for ImageNet's 7x7 and our face output layer for a 1000-way classifier:
    # the count must be torchvision's resnet50, 25,557,032.
    model = BACKBONES["resnet50"](embedding_size=512)
    face_output = sum(count_parameters(m) for m in (model.bn2, model.fc, model.features))
    imagenet = count_parameters(model) - 3 * 64 * 9 + 3 * 64 * 49 - face_output + 2048 * 1000 + 1000
    assert imagenet == 25_557_032


def test_attention56_body_matches_the_paper():
    # Residual Attention Network, Table 5: Attention-56 has 31.9 M parameters with ImageNet's
    # 7x7 stem and a 2048 -> 1000 classifier in place of our 3x3 stem and face output layer.
    model = BACKBONES["attention56"](embedding_size=512)
    face_output = sum(count_parameters(m) for m in (model.bn2, model.fc, model.features))
    imagenet = count_parameters(model) - 3 * 64 * 9 + 3 * 64 * 49 - face_output + 2048 * 1000 + 1000
    assert imagenet / 1e6 == pytest.approx(31.9, rel=0.01)


def test_attention92_adds_one_stage2_and_two_stage3_modules():
    def unit(channels):  # pre-activation bottleneck without projection
        inner = channels // 4
        return 2 * channels + channels * inner + 2 * inner + 9 * inner * inner + 2 * inner + inner * channels

    def module(channels, mask_depth):  # p + t + mask units (down, bottom, skips, ups) + p
        units = 1 + 2 + mask_depth + 1 + 2 * (mask_depth - 1) + 1
        return units * unit(channels) + 2 * (2 * channels) + 2 * channels * channels

    difference = parameters_millions("attention92") - parameters_millions("attention56")
    assert difference * 1e6 == pytest.approx(module(512, 2) + 2 * module(1024, 1), abs=0.5)


def test_spherenets_have_table2_layer_counts():
    # The layer count is that of conv layers: 4 strided + 2 per unit; the FC comes on top.
    for name, convs in (("spherenet20", 20), ("spherenet64", 64)):
        model = BACKBONES[name](embedding_size=EMBEDDING_SIZE)
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs, name


# ---- layout that checkpoint converters rely on -----------------------------------------------

def test_ir50_state_dict_has_insightface_layout():
    """Every key of insightface arcface_torch's iresnet50, and no other, with its shape."""
    expected = {"conv1.weight": (64, 3, 3, 3), "prelu.weight": (64,), "fc.weight": (512, 25088),
                "fc.bias": (512,)}
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def add_bn(prefix, channels):
        for key in bn_keys:
            expected[f"{prefix}.{key}"] = () if key == "num_batches_tracked" else (channels,)

    add_bn("bn1", 64)
    add_bn("bn2", 512)
    add_bn("features", 512)
    in_channels = 64
    for stage, (channels, units) in enumerate(zip((64, 128, 256, 512), (3, 4, 14, 3)), 1):
        for index in range(units):
            prefix = f"layer{stage}.{index}"
            unit_in = in_channels if index == 0 else channels
            add_bn(f"{prefix}.bn1", unit_in)
            expected[f"{prefix}.conv1.weight"] = (channels, unit_in, 3, 3)
            add_bn(f"{prefix}.bn2", channels)
            expected[f"{prefix}.prelu.weight"] = (channels,)
            expected[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
            add_bn(f"{prefix}.bn3", channels)
            if index == 0:
                expected[f"{prefix}.downsample.0.weight"] = (channels, unit_in, 1, 1)
                add_bn(f"{prefix}.downsample.1", channels)
        in_channels = channels
    state = BACKBONES["ir50"](embedding_size=512).state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == expected


def test_ir_stride_sits_on_the_second_conv():
    unit = BACKBONES["ir18"](embedding_size=EMBEDDING_SIZE).layer2[0]
    assert unit.conv1.stride == (1, 1) and unit.conv2.stride == (2, 2)
    assert unit.downsample[0].stride == (2, 2)


# ---- registry -------------------------------------------------------------------------------

def test_build_backbone_passes_embedding_size_and_options():
    model = build_backbone("ir18", EMBEDDING_SIZE, dropout=0.4)
    assert model.dropout.p == 0.4
    assert model.fc.out_features == EMBEDDING_SIZE


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        build_backbone("ir51", 512)
    message = str(error.value)
    assert "'ir51'" in message
    assert ", ".join(sorted(BACKBONES)) in message


def test_an_option_the_backbone_lacks_is_refused_by_name():
    with pytest.raises(UnknownName, match=r"^unknown mobilefacenet option 'dropout'; valid: \(none\)$"):
        build_backbone("mobilefacenet", 128, dropout=0.2)


def test_unknown_attention_is_refused():
    with pytest.raises(ValueError, match=r"'bam'.*cbam"):
        IResNet((2, 2, 2, 2), "bam")


# ---- the counters themselves ----------------------------------------------------------------

class TinyNet(nn.Module):
    """conv 3->4 (3x3, pad 1), depthwise conv 4->4 (3x3, stride 2, pad 1), linear 64->10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.depthwise = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = self.depthwise(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_count_macs_on_a_hand_computable_model():
    model = TinyNet().train()
    model.bn.eval()
    # conv: 4x8x8 outputs x 3x3x3 taps; depthwise: 4x4x4 outputs x 1x3x3 taps; fc: 10 x 64.
    per_image = 4 * 8 * 8 * 27 + 4 * 4 * 4 * 9 + 10 * 64
    assert count_macs(model, input_size=(1, 3, 8, 8)) == per_image
    assert count_macs(model, input_size=(2, 3, 8, 8)) == 2 * per_image
    assert model.training and not model.bn.training, "count_macs must restore the modes it found"


def test_count_macs_counts_a_shared_layer_each_time_it_runs():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(5, 5, bias=False)

        def forward(self, x):
            return self.fc(self.fc(x))

    assert count_macs(Twice(), input_size=(1, 5)) == 2 * 25


def test_parameter_and_size_counters():
    model = TinyNet()
    parameters = (4 * 3 * 9 + 4) + (4 + 4) + 4 * 9 + (64 * 10 + 10)
    assert count_parameters(model) == parameters
    assert fp32_size_bytes(model) == 4 * (parameters + 4 + 4)  # + BN running mean and variance
