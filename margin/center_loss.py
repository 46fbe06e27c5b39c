"""Auxiliary losses added beside any classification head: center loss and "agent center" loss.

* Center loss: Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
  ECCV 2016, Eq. 2.
* Agent center loss: the old repository's variant of the center loss (wujiyang/Face_Pytorch,
  ``lossfunctions/agentcenterloss.py``): centres live on the unit hypersphere and are compared
  with normalised features by cosine, 1 - cos(x, c_y), like ``torch.nn.CosineEmbeddingLoss``
  against the class "agent".

Both keep their centres as ``nn.Parameter``s ``[num_classes, embedding_size]`` so the training loop
can give them an optimizer (and learning rate) of their own; ``forward(embeddings, labels)`` returns
a scalar to add to the classification loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from margin.base import at_least_fp32, check_labels, check_positive


class _CenterBase(nn.Module):
    HYPERPARAMETERS: dict[str, type] = {}

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("embedding_size", embedding_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size))

    def _target_centers(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(f"embeddings must have shape [B, {self.embedding_size}], got {list(embeddings.shape)}")
        check_labels(labels, embeddings.shape[0], self.num_classes, allow_missing=False)
        return self.centers.index_select(0, labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_size={self.embedding_size}"


class CenterLoss(_CenterBase):
    r"""Center loss :math:`\tfrac12\,\mathrm{mean}_i \|x_i - c_{y_i}\|^2` (Wen et al., ECCV 2016).

    The paper sums over the batch and moves each centre with its own rule,
    :math:`c_j \leftarrow c_j - \alpha\,\sum_{i:y_i=j}(c_j - x_i)/(1 + n_j)`.  Here the centres
    are ordinary parameters trained by gradient descent on this (batch-mean) loss: plain SGD at
    rate eta moves :math:`c_j` by :math:`\eta\,n_j/B\,(\bar x_j - c_j)`, so to match the paper's
    step give the centres their own optimizer with a rate of about :math:`\alpha B / n_j`
    (e.g. alpha = 0.5 and the batch size divided by the images per class), and weight this loss
    with the paper's lambda when adding it to the softmax loss.  Centres start as N(0, 1) draws.
    """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        centers = self._target_centers(embeddings, labels)
        difference = at_least_fp32(embeddings) - at_least_fp32(centers)
        return 0.5 * difference.pow(2).sum(dim=1).mean()


class AgentCenterLoss(_CenterBase):
    r"""Agent center loss :math:`\mathrm{scale}\cdot\mathrm{mean}_i\,(1 - \cos(x_i, c_{y_i}))`.

    Implemented from the old repository's description and code: each class has a free "agent"
    vector, features and agents are both L2-normalised and the loss is one minus their cosine.
    That code averaged over a dense ``[B, C]`` one-hot product, i.e. divided the sum by B*C; this
    one divides by B (a per-sample mean), so its ``scale`` is C times the old one for the same
    strength.  Defaults ``scale=1``; agents start as N(0, 1) draws (only their direction matters).
    """

    HYPERPARAMETERS = {"scale": float}

    def __init__(self, num_classes: int, embedding_size: int, scale: float = 1.0) -> None:
        super().__init__(num_classes, embedding_size)
        check_positive("scale", scale)
        self.scale = float(scale)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        centers = self._target_centers(embeddings, labels)
        cos = (F.normalize(at_least_fp32(embeddings), dim=1) * F.normalize(at_least_fp32(centers), dim=1)).sum(dim=1)
        return self.scale * (1.0 - cos).mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


AUX_LOSSES = {"center": CenterLoss, "agent_center": AgentCenterLoss}
