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

from margin.base import MarginHead, at_least_fp32, check_labels


class SoftmaxHead(MarginHead):
    r"""Logits :math:`W x + b` (no normalisation, no margin, no scale).

    Paper: the softmax baseline of Liu et al., CVPR 2017 (SphereFace), Eq. 1.
    Defaults: ``bias=False``.  Weight initialised like :class:`torch.nn.Linear`.
    ``labels`` are only checked (int64 ``[B]``, values in [-1, C)), never used.
    """

    def __init__(self, embedding_size: int, num_classes: int, bias: bool = False) -> None:
        super().__init__(embedding_size, num_classes)
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        # The raw inner product is sensitive to the weight scale, unlike the cosine heads, so use
        # torch.nn.Linear's initialisation rather than the base class's std-0.01 normal.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = None
        if bias:
            bound = 1.0 / math.sqrt(embedding_size)
            self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0], self.num_classes)
        return at_least_fp32(F.linear(embeddings, self.weight, self.bias))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias={self.bias is not None}"
