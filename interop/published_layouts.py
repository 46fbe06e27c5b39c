"""Where each tensor of our backbones sits in published face-recognition checkpoints.

insightface arcface_torch (`recognition/arcface_torch/backbones/iresnet.py`, `iresnet18/34/50/100/
200`, checkpoints `backbone.pth`: a plain state_dict). Its `IResNet` is the network of
backbone/iresnet.py with the same attribute names: stem `conv1, bn1, prelu`; `layer1..4` of
`IBasicBlock`s `bn1, conv1, bn2, prelu, conv2 (stride), bn3` plus `downsample` (conv1x1 stride,
BN) on each stage's first unit (stride 2, so every stage has one); then `bn2`, `dropout`, `fc`
(512*7*7 -> num_features), `features` (BN1d, weight set to 1 and frozen). BN eps is 1e-5 as
ours. Its forward flattens before the dropout where ours drops out before flattening: the same
function (dropout is elementwise, and the identity in eval mode). Its `fp16` flag only runs the
convolutional part under CUDA autocast and the FC in fp32; the stored weights are fp32 (fp16
ones are cast to fp32). So the mapping is the identity on keys.

insightface arcface_torch ViTs (`backbones/vit.py`, get_model's `vit_t`, `vit_s`, `vit_b`, `vit_h` and
their WebFace42M variants `vit_t_dp005_mask0`, `vit_s_dp005_mask_0`, `vit_b_dp005_mask_005`,
`vit_l_dp005_mask_005`, which differ only in training regularisation): its `VisionTransformer` with
img_size 112, patch_size 9, norm_layer "ln", num_classes = the embedding size, is backbone/vit.py's
network with the same attribute names: `patch_embed.proj`, `pos_embed` (1, 144, D), `mask_token`
(1, 1, D), `blocks.N.{norm1, attn.qkv (no bias), attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`,
`feature.0` (Linear 144*D -> D, no bias), `feature.1` (BN1d), `feature.2` (Linear D -> embedding, no
bias), `feature.3` (BN1d). Its Dropout and DropPath hold no tensors. Its forward
runs the linear layers under CUDA autocast and the attention products in fp32; the stored weights
are fp32. So the mapping is the identity on keys, like the iresnets'.

TreB1eN InsightFace_Pytorch (`model.py`, checkpoints `model_ir_se50.pth`, `model_mobilefacenet.pth`):
- `Backbone(num_layers 50/100/152, mode "ir"/"ir_se")`: `input_layer` (conv3x3, BN, PReLU); `body`,
  one flat Sequential of units with the unit counts of ours (50: 3, 4, 14, 3), the first of each
  stage with stride 2, on the second 3x3 conv as ours; each unit is `res_layer` = BN, conv3x3,
  PReLU, conv3x3 (stride), BN [, SEModule(fc1, fc2: bias-free 1x1 convs, reduction 16)], added to
  `shortcut_layer`; `output_layer` = BN2d, Dropout, Flatten, Linear(512*7*7, 512), BN1d (whose
  weight is learnt, unlike insightface's). Its forward ends in an L2 normalisation, which cosine
  scores ignore. Two differences from ours, neither a different function:
  * its branch has no BN between the first conv and the PReLU; our `bn2` there becomes the
    identity (weight 1, bias 0, mean 0, variance 1 - eps: exact up to float rounding, in eval
    mode; fine-tuning in train mode would normalise there by batch statistics);
  * when a unit keeps its channel count but has stride 2 (only the first unit, 64 -> 64), its
    shortcut is MaxPool2d(kernel 1, stride 2), i.e. x[:, :, ::2, ::2], where ours is conv1x1
    stride 2 + BN; a conv1x1 with the identity matrix as weight, stride 2, and an identity BN
    computes exactly that subsampling. Elsewhere its shortcut is the identity or conv1x1 + BN
    exactly when ours is.
- `MobileFaceNet(embedding_size)`: `conv1`, `conv2_dw`, `conv_23` (Depth_Wise 64->64, expansion to
  128, stride 2), `conv_3` (Residual: 4 units 64, expansion 128), `conv_34` (64->128 via 256,
  stride 2), `conv_4` (6 units 128 via 256), `conv_45` (128->128 via 512, stride 2), `conv_5` (2
  units 128 via 256), `conv_6_sep`, `conv_6_dw`, `linear`, `bn`. Its "groups" are the expanded
  widths, i.e. the expansion factors 2, 2, 4, 2, 4, 2 of the paper's Table 1 that
  backbone/mobilefacenet.py follows; each Depth_Wise is `conv` (1x1, BN, PReLU), `conv_dw` (3x3
  depthwise, BN, PReLU), `project` (1x1, BN) with a residual add inside Residual blocks only.
  So it is our MobileFaceNet at embedding_size 512, its units renumbered into `bottlenecks`.
"""

from dataclasses import dataclass, field

from torch import nn


@dataclass
class Layout:
    """How to fill our state_dict: `renamed` maps our key -> the published file's key; the modules
    named in `identity_norms` (BN) and `identity_convs` (square 1x1 convs) have no published
    counterpart and are set to compute the identity."""

    renamed: dict[str, str] = field(default_factory=dict)
    identity_norms: list[str] = field(default_factory=list)
    identity_convs: list[str] = field(default_factory=list)

    def rename_module(self, model: nn.Module, ours: str, theirs: str) -> None:
        """Every tensor of our submodule `ours` comes from the same name under `theirs`."""
        for name in model.get_submodule(ours).state_dict():
            self.renamed[f"{ours}.{name}"] = f"{theirs}.{name}"


def same_keys(model: nn.Module) -> Layout:
    """insightface's iresnets and ViTs: our attribute names are theirs."""
    return Layout(renamed={key: key for key in model.state_dict()})


def treb1en_ir(model: nn.Module) -> Layout:
    """TreB1eN's `Backbone` in "ir" or "ir_se" mode onto our IResNet of the same depth."""
    layout = Layout()
    for ours, theirs in (("conv1", "input_layer.0"), ("bn1", "input_layer.1"), ("prelu", "input_layer.2"),
                         ("bn2", "output_layer.0"), ("fc", "output_layer.3"), ("features", "output_layer.4")):
        layout.rename_module(model, ours, theirs)
    body_index = 0
    for stage in range(1, 5):
        for unit_index, unit in enumerate(getattr(model, f"layer{stage}")):
            ours, theirs = f"layer{stage}.{unit_index}", f"body.{body_index}"
            for our_part, their_part in (("bn1", "res_layer.0"), ("conv1", "res_layer.1"),
                                         ("prelu", "res_layer.2"), ("conv2", "res_layer.3"),
                                         ("bn3", "res_layer.4")):
                layout.rename_module(model, f"{ours}.{our_part}", f"{theirs}.{their_part}")
            layout.identity_norms.append(f"{ours}.bn2")
            if unit.attention is not None:
                layout.rename_module(model, f"{ours}.attention", f"{theirs}.res_layer.5")
            if unit.downsample is not None:
                if unit.conv1.in_channels != unit.conv1.out_channels:
                    layout.rename_module(model, f"{ours}.downsample", f"{theirs}.shortcut_layer")
                else:  # their MaxPool2d(1, stride) shortcut: subsampling, no tensors
                    layout.identity_convs.append(f"{ours}.downsample.0")
                    layout.identity_norms.append(f"{ours}.downsample.1")
            body_index += 1
    return layout


# TreB1eN's MobileFaceNet modules holding our `bottlenecks` 0..14, in order.
TREB1EN_MOBILEFACENET_UNITS = (["conv_23"] + [f"conv_3.model.{i}" for i in range(4)] + ["conv_34"]
                               + [f"conv_4.model.{i}" for i in range(6)] + ["conv_45"]
                               + [f"conv_5.model.{i}" for i in range(2)])


def treb1en_mobilefacenet(model: nn.Module) -> Layout:
    layout = Layout()
    if len(model.bottlenecks) != len(TREB1EN_MOBILEFACENET_UNITS):
        raise ValueError(f"our MobileFaceNet has {len(model.bottlenecks)} bottlenecks, TreB1eN's "
                         f"{len(TREB1EN_MOBILEFACENET_UNITS)}")
    for name in ("conv1", "conv2_dw", "conv_6_sep", "conv_6_dw", "linear", "bn"):
        layout.rename_module(model, name, name)
    for index, theirs in enumerate(TREB1EN_MOBILEFACENET_UNITS):
        layout.rename_module(model, f"bottlenecks.{index}", theirs)
    return layout


# source -> our backbone name -> (layout builder, the published key whose rows are the embedding).
LAYOUTS = {
    "insightface": {
        **{name: (same_keys, "fc.weight") for name in ("ir18", "ir34", "ir50", "ir100", "ir200")},
        **{name: (same_keys, "feature.2.weight") for name in ("vit_t", "vit_s", "vit_b", "vit_l", "vit_h")},
    },
    "treb1en": {
        **{name: (treb1en_ir, "output_layer.3.weight")
           for name in ("ir50", "ir100", "ir152", "ir_se50", "ir_se100", "ir_se152")},
        "mobilefacenet": (treb1en_mobilefacenet, "linear.weight"),
    },
}
