"""Face embedding networks: each maps float [B,3,112,112] (normalised (x/255 - 0.5)/0.5) to
[B, embedding_size]. A network never picks its device or precision; the caller does.

`BACKBONES[name](embedding_size=..., **options)` builds one; `build_backbone` does the same with
errors that list what is valid. Options: `dropout` (before the FC) for the IR, ResNet and
attention networks; `grad_checkpoint` (recompute activations in the backward pass) for the IR nets
and the ViTs; `drop_path_rate` and `mask_ratio` (training regularisation) for the ViTs;
MobileFaceNet and SphereNet take none.
"""

import inspect

from runtime.errors import UnknownName

from . import attention, iresnet, resnet, spherenet, vit
from .mobilefacenet import MobileFaceNet

BACKBONES = {
    "mobilefacenet": MobileFaceNet,
    "ir18": iresnet.ir18,
    "ir34": iresnet.ir34,
    "ir50": iresnet.ir50,
    "ir100": iresnet.ir100,
    "ir152": iresnet.ir152,
    "ir200": iresnet.ir200,
    "ir_se18": iresnet.ir_se18,
    "ir_se34": iresnet.ir_se34,
    "ir_se50": iresnet.ir_se50,
    "ir_se100": iresnet.ir_se100,
    "ir_se152": iresnet.ir_se152,
    "ir_se200": iresnet.ir_se200,
    "ir_cam50": iresnet.ir_cam50,
    "ir_sam50": iresnet.ir_sam50,
    "ir_cbam50": iresnet.ir_cbam50,
    "ir_cam100": iresnet.ir_cam100,
    "ir_sam100": iresnet.ir_sam100,
    "ir_cbam100": iresnet.ir_cbam100,
    "resnet50": resnet.resnet50,
    "attention56": attention.attention56,
    "attention92": attention.attention92,
    "spherenet20": spherenet.spherenet20,
    "spherenet64": spherenet.spherenet64,
    "vit_t": vit.vit_t,
    "vit_s": vit.vit_s,
    "vit_b": vit.vit_b,
    "vit_l": vit.vit_l,
    "vit_h": vit.vit_h,
}


def backbone_options(name: str) -> set[str]:
    """The keyword options the network `name` takes besides embedding_size."""
    if name not in BACKBONES:
        raise UnknownName("backbone", name, sorted(BACKBONES))
    return set(inspect.signature(BACKBONES[name]).parameters) - {"embedding_size"}


def default_embedding_size(name: str) -> int:
    """The embedding size the network `name` is built with when none is given: its constructor's
    default (MobileFaceNet's 128, 512 for the others)."""
    if name not in BACKBONES:
        raise UnknownName("backbone", name, sorted(BACKBONES))
    return inspect.signature(BACKBONES[name]).parameters["embedding_size"].default


def build_backbone(name: str, embedding_size: int, **options):
    """The network `name` with an `embedding_size`-d output; `options` go to its constructor."""
    accepted = backbone_options(name)
    constructor = BACKBONES[name]
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UnknownName(f"{name} option", unknown[0], sorted(accepted))
    return constructor(embedding_size=embedding_size, **options)
