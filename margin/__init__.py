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

MARGINS = {
    "softmax": SoftmaxHead,
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "sphereface": SphereFaceHead,
    "combined": CombinedMarginHead,
    "curricularface": CurricularFaceHead,
    "adaface": AdaFaceHead,
    "magface": MagFaceHead,
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
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}")
    declared = registry[name].HYPERPARAMETERS
    unknown = sorted(set(hyper) - set(declared))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {kind} {name!r}; "
            f"valid: {', '.join(declared) if declared else '(none)'}"
        )
    return registry[name](*args, **{key: hyperparameter_value(key, value, declared[key])
                                    for key, value in hyper.items()})


def build_margin(name: str, embedding_size: int, num_classes: int, **hyper) -> MarginHead:
    """Build the head registered as ``name`` in ``MARGINS`` with the given hyperparameters."""
    return _build(MARGINS, "margin", name, (embedding_size, num_classes), hyper)


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
    "build_aux_loss",
    "build_margin",
    "hyperparameter_value",
]
