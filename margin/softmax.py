"""Plain softmax classifier: the inner-product layer that feeds an ordinary softmax cross-entropy.

This is the unnormalised baseline against which the margin heads (SphereFace, CosFace, ArcFace, ...)
are compared, e.g. in Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition",
CVPR 2017, Sec. 3.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from margin.base import MarginHead, at_least_fp32, check_labels, fill_class_rows


class SoftmaxHead(MarginHead):
    r"""Logits :math:`W x + b` (no normalisation, no margin, no scale).

    Paper: the softmax baseline of Liu et al., CVPR 2017 (SphereFace), Eq. 1.
    Defaults: ``bias=False``.  Weight initialised like :class:`torch.nn.Linear`.
    ``labels`` are only checked (int64 ``[B]``, values in [-1, C)), never used.
    """

    HYPERPARAMETERS = {"bias": bool}
    cosine_margin = False

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = False) -> None:
        super().__init__(embedding_size, num_classes)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self, first_class: int = 0, seed: int | None = None, init: str = "default",
                         all_classes: int | None = None) -> None:
        """init "default": torch.nn.Linear's initialisation, U(-1/sqrt(D), 1/sqrt(D)) for weight and
        bias (the raw inner product is sensitive to the weight scale, unlike the cosine heads);
        "normal" / "xavier_uniform" draw the weight as MarginHead does, the bias as "default". With
        `seed`, class i's row (and bias) come from (seed, first_class + i), as in MarginHead."""
        bound = 1.0 / math.sqrt(self.embedding_size)

        def uniform(generator, shape):
            return torch.rand(shape, generator=generator) * (2 * bound) - bound
        if init != "default":
            super().reset_parameters(first_class, seed, init, all_classes)
        elif seed is None:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # = U(-bound, bound)
        else:
            fill_class_rows(self.weight, first_class, seed, uniform)
        if getattr(self, "bias", None) is None:
            return
        if seed is None:
            nn.init.uniform_(self.bias, -bound, bound)
        else:
            fill_class_rows(self.bias, first_class, seed + 1, uniform)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor | None = None,
                split=None) -> torch.Tensor:
        """W x + b over every class, or over the rows ``classes`` (Partial FC's sample); no statistics."""
        self.check_embeddings(embeddings)
        weight = self.class_rows(classes)
        bias = self.bias if self.bias is None or classes is None else self.bias[classes]
        check_labels(labels, embeddings.shape[0], weight.shape[0])
        return at_least_fp32(F.linear(embeddings, weight, bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"
