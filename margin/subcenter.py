"""Sub-center ArcFace: K centres per class, the class cosine is the best of them.

Deng, Guo, Liu, Zafeiriou, "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web
Faces", ECCV 2020. Each class owns K sub-centres; a sample's cosine to a class is its largest cosine
to any of them (Eq. 1, the max pooling over sub-centres), and ArcFace's margin is applied to that.
Clean images of a class gather around one dominant sub-centre, while mislabelled ones settle on the
others instead of pulling the class apart. After training the head is reduced to each class's
dominant sub-centre (the one most of its training images are nearest), and the images far from it
are the likely label noise (Sec. 3.2): ``dominant_subcentres`` and ``tools/data/clean_labels.py``.

``weight`` is ``[num_classes, K, embedding_size]``: its first dimension is still the class, so
Partial FC shards, samples, checkpoints and initialises it by class rows exactly as a plain head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from margin.angular import ArcFaceHead


class SubCenterArcFaceHead(ArcFaceHead):
    r"""ArcFace on :math:`\cos\theta_j = \max_k \cos(x, W_{j,k})` over K sub-centres per class.

    Defaults ``s=64, m=0.5, k=3`` (the paper's K = 3). ``gradient`` as ArcFace's."""

    HYPERPARAMETERS = {**ArcFaceHead.HYPERPARAMETERS, "k": int}

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False, gradient: str = "exact", k: int = 3) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k (sub-centres per class) must be an int >= 1, got {k!r}")
        super().__init__(embedding_size, num_classes, s=s, m=m, easy_margin=easy_margin, gradient=gradient)
        self.k = k
        self.weight = torch.nn.Parameter(torch.empty(num_classes, k, embedding_size))
        self.reset_parameters()

    def cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C]: per class, the largest cosine to its sub-centres (fp32 also under autocast)."""
        self.check_embeddings(embeddings)
        rows = self.class_rows(classes)
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, rows.dtype), torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            centres = F.normalize(rows.to(dtype), dim=-1).reshape(-1, self.embedding_size)
            cos = F.linear(F.normalize(embeddings.to(dtype), dim=1), centres)
        return cos.view(embeddings.shape[0], rows.shape[0], self.k).amax(dim=2)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


@torch.no_grad()
def dominant_subcentres(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [C, D] unit length, counts [C, K]): each class's dominant sub-centre, the one nearest
    (largest cosine) to the most of the class's training ``embeddings`` [N, D] labelled ``labels`` [N]
    (ties: the lower index; a class with no image keeps sub-centre 0). ``weight`` is a head's
    ``[C, K, D]``, or a plain head's ``[C, D]`` (K = 1: the centre itself)."""
    if weight.dim() == 2:
        weight = weight.unsqueeze(1)
    classes, k, _ = weight.shape
    centres = F.normalize(weight.double(), dim=-1)
    unit = F.normalize(embeddings.double(), dim=1)
    nearest = torch.einsum("nd,nkd->nk", unit, centres[labels]).argmax(dim=1)
    counts = torch.zeros(classes * k, dtype=torch.long)
    counts.index_add_(0, labels * k + nearest, torch.ones_like(labels))
    counts = counts.view(classes, k)
    dominant = counts.argmax(dim=1)
    return centres[torch.arange(classes), dominant].float(), counts


@torch.no_grad()
def angles_to_dominant(weight: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles [N] in degrees between each embedding and its label's dominant sub-centre, those
    centres [C, D] as ``dominant_subcentres`` gives them); the paper drops images beyond 75 degrees as
    label noise."""
    centres, _ = dominant_subcentres(weight, embeddings, labels)
    cos = (F.normalize(embeddings.double(), dim=1) * centres.double()[labels]).sum(dim=1)
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0))), centres
