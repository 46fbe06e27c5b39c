"""tools/model/convert_weights.py: published checkpoints, built here with the published key layout and
shapes (from insightface arcface_torch's backbones/iresnet.py and backbones/vit.py and TreB1eN
InsightFace_Pytorch's model.py) and random values, convert into backbone files whose network computes what the
published forward pass computes. That forward pass is restated below as functional code over the
published state_dict, in eval mode."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dataset import DataFormatError
from evaluation.model_loading import load_backbone
from interop.convert import convert_state_dict
from tools.model.convert_weights import main as convert_main

# One thread: on the test machines' two shared cores a second one costs more than it gains
# (a contended OpenMP team spins).
pytestmark = pytest.mark.usefixtures("one_thread")

BN_EPS = 1e-5  # both publishers use PyTorch's default
TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "model", "convert_weights.py")


# --- published state_dicts, random values --------------------------------------------------------

def add_conv(state, name, out_channels, in_channels, kernel, generator):
    std = (in_channels * kernel * kernel) ** -0.5  # keeps activations at unit scale through depth
    state[f"{name}.weight"] = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) * std


def add_bn(state, name, channels, generator, tracked=True, weight=None):
    state[f"{name}.weight"] = torch.rand(channels, generator=generator) + 0.5 if weight is None else weight
    state[f"{name}.bias"] = torch.randn(channels, generator=generator) * 0.1
    state[f"{name}.running_mean"] = torch.randn(channels, generator=generator) * 0.1
    state[f"{name}.running_var"] = torch.rand(channels, generator=generator) + 0.5
    if tracked:
        state[f"{name}.num_batches_tracked"] = torch.tensor(1000)


def add_prelu(state, name, channels, generator):
    state[f"{name}.weight"] = torch.rand(channels, generator=generator) * 0.5


def insightface_iresnet_state(layers, num_features=512, seed=0):
    """arcface_torch IResNet(IBasicBlock, layers): stage widths 64..512, downsample on each stage's
    first unit (stride 2), fc 512*7*7 -> num_features, `features` BN1d with weight 1."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    add_conv(state, "conv1", 64, 3, 3, g)
    add_bn(state, "bn1", 64, g)
    add_prelu(state, "prelu", 64, g)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), 1):
        for block in range(blocks):
            unit = f"layer{stage}.{block}"
            add_bn(state, f"{unit}.bn1", inplanes, g)
            add_conv(state, f"{unit}.conv1", planes, inplanes, 3, g)
            add_bn(state, f"{unit}.bn2", planes, g)
            add_prelu(state, f"{unit}.prelu", planes, g)
            add_conv(state, f"{unit}.conv2", planes, planes, 3, g)
            add_bn(state, f"{unit}.bn3", planes, g, weight=torch.rand(planes, generator=g) * 0.2)
            if block == 0:
                add_conv(state, f"{unit}.downsample.0", planes, inplanes, 1, g)
                add_bn(state, f"{unit}.downsample.1", planes, g)
            inplanes = planes
    add_bn(state, "bn2", 512, g)
    state["fc.weight"] = torch.randn(num_features, 512 * 49, generator=g) * (512 * 49) ** -0.5
    state["fc.bias"] = torch.randn(num_features, generator=g) * 0.1
    add_bn(state, "features", num_features, g, weight=torch.ones(num_features))
    return state


def insightface_vit_state(dim, depth, num_features=512, seed=3):
    """arcface_torch VisionTransformer(img_size=112, patch_size=9, embed_dim=dim, depth=depth,
    num_heads=8, norm_layer="ln", num_classes=num_features): 144 patch tokens; linear weights at
    1/sqrt(fan-in) so that attention is far from uniform and every block changes the tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens, hidden = 144, 4 * dim

    def linear(name, out_features, in_features, bias=True):
        state[f"{name}.weight"] = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
        if bias:
            state[f"{name}.bias"] = torch.randn(out_features, generator=g) * 0.1

    def layer_norm(name):
        state[f"{name}.weight"] = torch.rand(dim, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(dim, generator=g) * 0.1

    state = {"pos_embed": torch.randn(1, tokens, dim, generator=g) * 0.5,
             "mask_token": torch.randn(1, 1, dim, generator=g) * 0.02}
    add_conv(state, "patch_embed.proj", dim, 3, 9, g)
    state["patch_embed.proj.bias"] = torch.randn(dim, generator=g) * 0.1
    for block in range(depth):
        name = f"blocks.{block}"
        layer_norm(f"{name}.norm1")
        linear(f"{name}.attn.qkv", 3 * dim, dim, bias=False)
        linear(f"{name}.attn.proj", dim, dim)
        layer_norm(f"{name}.norm2")
        linear(f"{name}.mlp.fc1", hidden, dim)
        state[f"{name}.mlp.fc1.weight"] *= 3  # a few % of the pre-activations above ReLU6's cap
        linear(f"{name}.mlp.fc2", dim, hidden)
    layer_norm("norm")
    linear("feature.0", dim, tokens * dim, bias=False)
    add_bn(state, "feature.1", dim, g)
    linear("feature.2", num_features, dim, bias=False)
    add_bn(state, "feature.3", num_features, g)
    for name, width in (("feature.1", dim), ("feature.3", num_features)):
        # small variances, so that BN's eps (2e-5 here) shows in the output
        state[f"{name}.running_var"] = torch.rand(width, generator=g) * 0.01 + 0.01
    return state


# TreB1eN get_blocks(50): (in_channel, depth, stride) of every unit of `body`.
TREB1EN_50_UNITS = [(64, 64, 2), (64, 64, 1), (64, 64, 1), (64, 128, 2), *[(128, 128, 1)] * 3,
                    (128, 256, 2), *[(256, 256, 1)] * 13, (256, 512, 2), *[(512, 512, 1)] * 2]


def treb1en_ir_se_state(units, seed=1):
    """TreB1eN Backbone(50, mode="ir_se"), as a file saved by PyTorch < 0.4.1 holds it: no
    num_batches_tracked."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    add_conv(state, "input_layer.0", 64, 3, 3, g)
    add_bn(state, "input_layer.1", 64, g, tracked=False)
    add_prelu(state, "input_layer.2", 64, g)
    for index, (in_channel, depth, _) in enumerate(units):
        unit = f"body.{index}"
        if in_channel != depth:
            add_conv(state, f"{unit}.shortcut_layer.0", depth, in_channel, 1, g)
            add_bn(state, f"{unit}.shortcut_layer.1", depth, g, tracked=False)
        add_bn(state, f"{unit}.res_layer.0", in_channel, g, tracked=False)
        add_conv(state, f"{unit}.res_layer.1", depth, in_channel, 3, g)
        add_prelu(state, f"{unit}.res_layer.2", depth, g)
        add_conv(state, f"{unit}.res_layer.3", depth, depth, 3, g)
        add_bn(state, f"{unit}.res_layer.4", depth, g, tracked=False, weight=torch.rand(depth, generator=g) * 0.2)
        add_conv(state, f"{unit}.res_layer.5.fc1", depth // 16, depth, 1, g)
        add_conv(state, f"{unit}.res_layer.5.fc2", depth, depth // 16, 1, g)
    add_bn(state, "output_layer.0", 512, g, tracked=False)
    state["output_layer.3.weight"] = torch.randn(512, 512 * 49, generator=g) * (512 * 49) ** -0.5
    state["output_layer.3.bias"] = torch.randn(512, generator=g) * 0.1
    add_bn(state, "output_layer.4", 512, g, tracked=False)
    return state


# TreB1eN MobileFaceNet: (module, in_c, out_c, stride, groups = expanded width, residual) of every
# Depth_Wise, in forward order.
TREB1EN_MOBILEFACENET_DEPTH_WISE = (
    [("conv_23", 64, 64, 2, 128, False)] + [(f"conv_3.model.{i}", 64, 64, 1, 128, True) for i in range(4)]
    + [("conv_34", 64, 128, 2, 256, False)] + [(f"conv_4.model.{i}", 128, 128, 1, 256, True) for i in range(6)]
    + [("conv_45", 128, 128, 2, 512, False)] + [(f"conv_5.model.{i}", 128, 128, 1, 256, True) for i in range(2)])


def treb1en_mobilefacenet_state(embedding_size=512, seed=2):
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv_block(name, in_c, out_c, kernel, groups=1, linear=False):
        add_conv(state, f"{name}.conv", out_c, in_c // groups, kernel, g)
        add_bn(state, f"{name}.bn", out_c, g)
        if not linear:
            add_prelu(state, f"{name}.prelu", out_c, g)

    conv_block("conv1", 3, 64, 3)
    conv_block("conv2_dw", 64, 64, 3, groups=64)
    for name, in_c, out_c, _, groups, _ in TREB1EN_MOBILEFACENET_DEPTH_WISE:
        conv_block(f"{name}.conv", in_c, groups, 1)
        conv_block(f"{name}.conv_dw", groups, groups, 3, groups=groups)
        conv_block(f"{name}.project", groups, out_c, 1, linear=True)
    conv_block("conv_6_sep", 128, 512, 1)
    conv_block("conv_6_dw", 512, 512, 7, groups=512, linear=True)
    state["linear.weight"] = torch.randn(embedding_size, 512, generator=g) * 512 ** -0.5
    add_bn(state, "bn", embedding_size, g)
    return state


# --- the published forward passes, restated --------------------------------------------------------

def batch_norm(state, name, x, eps=BN_EPS):
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                        state[f"{name}.weight"], state[f"{name}.bias"], training=False, eps=eps)


def insightface_iresnet_forward(s, x, layers):
    x = F.prelu(batch_norm(s, "bn1", F.conv2d(x, s["conv1.weight"], padding=1)), s["prelu.weight"])
    for stage, blocks in enumerate(layers, 1):
        for block in range(blocks):
            unit, stride = f"layer{stage}.{block}", 2 if block == 0 else 1
            out = F.conv2d(batch_norm(s, f"{unit}.bn1", x), s[f"{unit}.conv1.weight"], padding=1)
            out = F.prelu(batch_norm(s, f"{unit}.bn2", out), s[f"{unit}.prelu.weight"])
            out = batch_norm(s, f"{unit}.bn3", F.conv2d(out, s[f"{unit}.conv2.weight"], stride=stride, padding=1))
            identity = x
            if block == 0:
                identity = batch_norm(s, f"{unit}.downsample.1",
                                      F.conv2d(x, s[f"{unit}.downsample.0.weight"], stride=stride))
            x = out + identity
    x = torch.flatten(batch_norm(s, "bn2", x), 1)  # then dropout: the identity in eval mode
    return batch_norm(s, "features", F.linear(x, s["fc.weight"], s["fc.bias"]))


def insightface_vit_forward(s, x, depth, heads=8):
    """VisionTransformer.forward in eval mode (no masking; dropout and drop path are the identity),
    the attention written out as its Attention.forward does: explicit scores, softmax, product."""
    x = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=9)
    x = x.flatten(2).transpose(1, 2) + s["pos_embed"]
    batch, tokens, dim = x.shape

    def layer_norm(name, x):
        return F.layer_norm(x, (dim,), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-5)

    for block in range(depth):
        name = f"blocks.{block}"
        qkv = F.linear(layer_norm(f"{name}.norm1", x), s[f"{name}.attn.qkv.weight"])
        qkv = qkv.reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        scores = (qkv[0] @ qkv[1].transpose(-2, -1)) * (dim // heads) ** -0.5
        mixed = (scores.softmax(dim=-1) @ qkv[2]).transpose(1, 2).reshape(batch, tokens, dim)
        x = x + F.linear(mixed, s[f"{name}.attn.proj.weight"], s[f"{name}.attn.proj.bias"])
        hidden = F.relu6(F.linear(layer_norm(f"{name}.norm2", x), s[f"{name}.mlp.fc1.weight"],
                                  s[f"{name}.mlp.fc1.bias"]))
        x = x + F.linear(hidden, s[f"{name}.mlp.fc2.weight"], s[f"{name}.mlp.fc2.bias"])
    x = layer_norm("norm", x).reshape(batch, tokens * dim)
    x = batch_norm(s, "feature.1", F.linear(x, s["feature.0.weight"]), eps=2e-5)
    return batch_norm(s, "feature.3", F.linear(x, s["feature.2.weight"]), eps=2e-5)


def treb1en_ir_se_forward(s, x, units):
    """Backbone.forward before its final l2_norm (which cosine scores ignore)."""
    x = F.prelu(batch_norm(s, "input_layer.1", F.conv2d(x, s["input_layer.0.weight"], padding=1)),
                s["input_layer.2.weight"])
    for index, (in_channel, depth, stride) in enumerate(units):
        unit = f"body.{index}"
        if in_channel == depth:
            shortcut = F.max_pool2d(x, 1, stride)
        else:
            shortcut = batch_norm(s, f"{unit}.shortcut_layer.1",
                                  F.conv2d(x, s[f"{unit}.shortcut_layer.0.weight"], stride=stride))
        res = F.conv2d(batch_norm(s, f"{unit}.res_layer.0", x), s[f"{unit}.res_layer.1.weight"], padding=1)
        res = F.conv2d(F.prelu(res, s[f"{unit}.res_layer.2.weight"]), s[f"{unit}.res_layer.3.weight"],
                       stride=stride, padding=1)
        res = batch_norm(s, f"{unit}.res_layer.4", res)
        squeezed = F.relu(F.conv2d(F.adaptive_avg_pool2d(res, 1), s[f"{unit}.res_layer.5.fc1.weight"]))
        res = res * torch.sigmoid(F.conv2d(squeezed, s[f"{unit}.res_layer.5.fc2.weight"]))
        x = res + shortcut
    x = batch_norm(s, "output_layer.0", x).view(x.size(0), -1)
    return batch_norm(s, "output_layer.4", F.linear(x, s["output_layer.3.weight"], s["output_layer.3.bias"]))


def treb1en_mobilefacenet_forward(s, x):
    """MobileFaceNet.forward before its final l2_norm."""
    def conv_block(name, x, stride=1, padding=0, groups=1, linear=False):
        x = batch_norm(s, f"{name}.bn", F.conv2d(x, s[f"{name}.conv.weight"], stride=stride,
                                                 padding=padding, groups=groups))
        return x if linear else F.prelu(x, s[f"{name}.prelu.weight"])

    x = conv_block("conv2_dw", conv_block("conv1", x, stride=2, padding=1), padding=1, groups=64)
    for name, _, _, stride, groups, residual in TREB1EN_MOBILEFACENET_DEPTH_WISE:
        out = conv_block(f"{name}.conv", x)
        out = conv_block(f"{name}.conv_dw", out, stride=stride, padding=1, groups=groups)
        out = conv_block(f"{name}.project", out, linear=True)
        x = x + out if residual else out
    x = conv_block("conv_6_dw", conv_block("conv_6_sep", x), groups=512, linear=True)
    return batch_norm(s, "bn", F.linear(x.view(x.size(0), -1), s["linear.weight"]))


# --- tests ------------------------------------------------------------------------------------------

def images(batch_size=2):
    generator = torch.Generator().manual_seed(7)
    return torch.rand(batch_size, 3, 112, 112, generator=generator) * 2 - 1


def assert_same_function(ours, reference, tolerance=1e-6):
    """Equal to float rounding: 1e-6 of the embedding's scale, tight enough to notice a BN standing
    for TreB1eN's missing one left at PyTorch's default statistics (a factor 1/sqrt(1 + 1e-5) per
    unit), which stays far below the usual 1e-5."""
    assert ours.shape == reference.shape
    scale = reference.abs().max().item()
    assert scale > 0.1  # a real embedding, not one that vanished
    difference = (ours - reference).abs().max().item()
    assert difference <= tolerance * max(1.0, scale), f"max difference {difference:.2e} at scale {scale:.3g}"


CASES = {
    "insightface ir18": ("insightface", "ir18", lambda: insightface_iresnet_state((2, 2, 2, 2)),
                         lambda s, x: insightface_iresnet_forward(s, x, (2, 2, 2, 2))),
    # The ViTs' attention runs through a fused kernel here and as explicit products there: the
    # accumulation order differs, so the bound is the usual 1e-5 (still far below any real change).
    "insightface vit_t": ("insightface", "vit_t", lambda: insightface_vit_state(256, 12),
                          lambda s, x: insightface_vit_forward(s, x, 12), 1e-5),
    "treb1en ir_se50": ("treb1en", "ir_se50", lambda: treb1en_ir_se_state(TREB1EN_50_UNITS),
                        lambda s, x: treb1en_ir_se_forward(s, x, TREB1EN_50_UNITS)),
    "treb1en mobilefacenet": ("treb1en", "mobilefacenet", treb1en_mobilefacenet_state,
                              treb1en_mobilefacenet_forward),
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case in ("insightface ir18",
                                  "insightface vit_t") else case for case in CASES])
def test_converted_network_computes_the_published_forward(case, tmp_path, capsys):
    source, arch, make_state, published_forward, *tolerance = CASES[case]
    published = make_state()
    # TreB1eN's files date from 2018: the legacy (pre-1.6) serialisation.
    torch.save(published, tmp_path / "published.pth", _use_new_zipfile_serialization=source == "insightface")
    convert_main(["--source", source, "--arch", arch, str(tmp_path / "published.pth"), str(tmp_path / "ours.pt")])
    assert f"{arch}, 512-d" in capsys.readouterr().out
    model, name, embedding_size = load_backbone(tmp_path / "ours.pt")
    assert (name, embedding_size) == (arch, 512)
    with torch.no_grad():
        assert_same_function(model(images()), published_forward(published, images()), *tolerance)


def test_fp16_and_data_parallel_files_convert(tmp_path):
    published = insightface_iresnet_state((2, 2, 2, 2))
    wrapped = {f"module.{key}": value.half() if value.is_floating_point() else value
               for key, value in published.items()}
    torch.save(wrapped, tmp_path / "backbone.pth")
    convert_main(["--source", "insightface", "--arch", "ir18", str(tmp_path / "backbone.pth"),
                  str(tmp_path / "ours.pt")])
    converted = torch.load(tmp_path / "ours.pt", weights_only=True)["state_dict"]
    assert converted.keys() == published.keys()
    for key, value in published.items():
        expected = value.half().float() if value.is_floating_point() else value
        assert converted[key].dtype == value.dtype and torch.equal(converted[key], expected), key


def save_changed(tmp_path, change):
    published = insightface_iresnet_state((2, 2, 2, 2))
    change(published)
    torch.save(published, tmp_path / "backbone.pth")
    return str(tmp_path / "backbone.pth")


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path):
    path = save_changed(tmp_path, lambda s: s.pop("layer3.1.bn2.running_var"))
    with pytest.raises(DataFormatError, match=r"backbone\.pth.*missing 1 key\(s\): layer3\.1\.bn2\.running_var"):
        convert_main(["--source", "insightface", "--arch", "ir18", path, str(tmp_path / "o.pt")])
    path = save_changed(tmp_path, lambda s: s.update({"head.kernel": torch.zeros(512, 10)}))
    with pytest.raises(DataFormatError, match=r"1 unexpected key\(s\): head\.kernel"):
        convert_main(["--source", "insightface", "--arch", "ir18", path, str(tmp_path / "o.pt")])
    path = save_changed(tmp_path, lambda s: s.update({"layer2.0.conv1.weight": torch.zeros(128, 64, 1, 1)}))
    with pytest.raises(DataFormatError, match=r"layer2\.0\.conv1\.weight \(128, 64, 1, 1\) .*\(128, 64, 3, 3\)"):
        convert_main(["--source", "insightface", "--arch", "ir18", path, str(tmp_path / "o.pt")])
    assert not (tmp_path / "o.pt").exists()


def test_a_file_of_another_depth_is_refused(tmp_path):
    path = save_changed(tmp_path, lambda s: None)
    with pytest.raises(DataFormatError,
                       match=r"does not hold the insightface ir34 layout: missing \d+ key\(s\): layer1\.2"):
        convert_state_dict("insightface", "ir34", torch.load(path, weights_only=True), path)


@pytest.mark.slow
def test_the_tool_reports_errors_in_one_line(tmp_path, capsys):
    path = save_changed(tmp_path, lambda s: s.pop("fc.bias"))
    result = subprocess.run([sys.executable, TOOL, "--source", "insightface", "--arch",
                             "ir18", path, str(tmp_path / "o.pt")], capture_output=True, text=True)
    assert result.returncode == 1
    expected = f"error: {path}: does not hold the insightface ir18 layout: missing 1 key(s): fc.bias"
    assert result.stderr.strip() == expected
    # the usage error, in this process (argparse's exit, as the command above would take it)
    with pytest.raises(SystemExit) as refused:
        convert_main(["--source", "treb1en", "--arch", "ir18", path, str(tmp_path / "o.pt")])
    assert refused.value.code == 2 and "valid: ir50, ir100, ir152, ir_se50" in capsys.readouterr().err


def test_a_vit_file_of_another_width_is_refused():
    published = insightface_vit_state(256, 12)  # vit_t: vit_s has the same keys at width 512
    with pytest.raises(DataFormatError, match=r"vit_t\.pt: shapes differ from insightface vit_s's: "
                                              r"pos_embed \(1, 144, 256\) \(ours pos_embed \(1, 144, 512\)\)"):
        convert_state_dict("insightface", "vit_s", published, "vit_t.pt")
