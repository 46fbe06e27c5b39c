"""Classification heads (softmax and margin-based) and auxiliary losses for face recognition.

``MARGINS`` maps a config name to a head constructor ``(embedding_size, num_classes, **hyper)``;
``build_margin`` builds one with clear errors for unknown names or hyperparameters.  Every head
maps ``(embeddings [B, D] float, labels [B] int64)`` to logits ``[B, C]`` for
``torch.nn.functional.cross_entropy`` and offers two hooks for the training loop::

    head.set_step(step)                                   # schedules (SphereFace's lambda)
    loss = F.cross_entropy(head(x, y), y) + head.regularizer(x)   # MagFace's norm regulariser

Cosine heads also expose ``margin_logits(cos, labels, norms=None)``, the margin applied to a
(possibly sharded) cosine matrix with labels of -1 for classes outside it; see ``margin.base``.
``AUX_LOSSES`` maps names to losses added beside any head (center loss and its cosine variant).
The papers behind each head are cited in its docstring.
"""

from __future__ import annotations

from torch import nn

from margin.adaptive import AdaFaceHead, MagFaceHead
from margin.angular import ArcFaceHead, CombinedMarginHead, CosFaceHead, CurricularFaceHead
from margin.base import MarginHead
from margin.center_loss import AUX_LOSSES, AgentCenterLoss, CenterLoss
from margin.softmax import SoftmaxHead
from margin.sphereface import SphereFaceHead
from margin.subcenter import SubCenterArcFaceHead, angles_to_dominant, dominant_subcentres
from runtime.errors import UnknownName

MARGINS = {
    "softmax": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "sphereface": SphereFaceHead,
    "combined": CombinedMarginHead,
    "curricularface": CurricularFaceHead,
    "adaface": AdaFaceHead,
    "magface": MagFaceHead,
    "subcenter_arcface": SubCenterArcFaceHead,
}


def hyperparameter_value(name: str, value, kind: type):
    """`value` cast to the `kind` a head declares for option `name` where that loses nothing (an int
    for a float option; an integral float for an int option: SphereFace's m = 4.0 from the float
    config field). Anything else is passed on unchanged for the head's constructor to judge."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _build(registry: dict, kind: str, name: str, args: tuple, hyper: dict) -> nn.Module:
    if name not in registry:
        raise UnknownName(kind, name, sorted(registry))
    declared = registry[name].HYPERPARAMETERS
    unknown = sorted(set(hyper) - set(declared))
    if unknown:
        raise UnknownName(f"{name} hyperparameter", unknown[0], declared)
    return registry[name](*args, **{key: hyperparameter_value(key, value, declared[key])
                                    for key, value in hyper.items()})


def build_margin(name: str, embedding_size: int, num_classes: int, interclass_filtering_threshold: float = 0.0,
                 **hyper) -> MarginHead:
    """Build the head registered as ``name`` in ``MARGINS`` with the given hyperparameters.

    ``interclass_filtering_threshold`` (arcface_torch's, any cosine head): non-target cosines above
    it count as 0 (``margin.base.filter_interclass``); 0 = off."""
    head = _build(MARGINS, "head", name, (embedding_size, num_classes), hyper)
    if interclass_filtering_threshold:
        if not head.cosine_margin:
            raise ValueError(f"interclass_filtering_threshold needs a cosine head; {name!r} is not one")
        if not (isinstance(interclass_filtering_threshold, (int, float)) and 0 < interclass_filtering_threshold < 1):
            raise ValueError(f"interclass_filtering_threshold must lie in [0, 1), got {interclass_filtering_threshold!r}")
        head.interclass_filtering_threshold = float(interclass_filtering_threshold)
    return head


def build_aux_loss(name: str, num_classes: int, embedding_size: int, **hyper) -> nn.Module:
    """Build the auxiliary loss registered as ``name`` in ``AUX_LOSSES``."""
    return _build(AUX_LOSSES, "auxiliary loss", name, (num_classes, embedding_size), hyper)


__all__ = [
    "AUX_LOSSES",
    "MARGINS",
    "AdaFaceHead",
    "AgentCenterLoss",
    "ArcFaceHead",
    "CenterLoss",
    "CombinedMarginHead",
    "CosFaceHead",
    "CurricularFaceHead",
    "MagFaceHead",
    "MarginHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "SubCenterArcFaceHead",
    "angles_to_dominant",
    "build_aux_loss",
    "build_margin",
    "dominant_subcentres",
    "hyperparameter_value",
]
