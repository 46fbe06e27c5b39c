"""Fixed-margin cosine heads: CosFace, ArcFace, the combined margin, and CurricularFace.

Papers:
* CosFace: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
* ArcFace and the combined margin: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep
  Face Recognition", CVPR 2019 (Sec. 3.3 and insightface's ``combined`` margin, cos(m1*theta + m2) - m3).
* CurricularFace: Huang et al., "CurricularFace: Adaptive Curriculum Learning Loss for Deep Face
  Recognition", CVPR 2020.

Each head's math lives in a function of the cosine matrix (see ``margin.base``); the head's
``margin_logits(cos, labels, norms=None)`` binds its hyperparameters so that a sharded classifier
can call it on a slice of columns with re-mapped labels (-1 = class not in this slice).
"""

from __future__ import annotations

import torch

from runtime.errors import UnknownName

from margin.base import (
    MarginHead,
    angular_margin_target,
    at_least_fp32,
    check_cosine,
    check_non_negative,
    check_positive,
    gather_target,
    scatter_target,
)


def cosface_logits(cos: torch.Tensor, labels: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """s*(cos(theta_y) - m) at each row's target column, s*cos(theta_j) elsewhere."""
    check_cosine(cos, labels)
    cos = at_least_fp32(cos)
    target, has_target, columns = gather_target(cos, labels)
    return scatter_target(s * cos, columns, has_target, s * (target - m))


MARGIN_GRADIENTS = ("exact", "straight_through")


def straight_through_margin_target(
    cos_target: torch.Tensor, m1: float, m2: float, m3: float, easy_margin: bool = False
) -> torch.Tensor:
    """arcface_torch's margined target: the value cos(m1*arccos(c) + m2) - m3 computed without gradient
    (its ``CombinedMarginLoss`` applies the margin in place under ``torch.no_grad()``), so that the
    gradient passes straight through: d(target)/d(cos) = 1, as for every other column. No continuation
    past m1*theta + m2 = pi: the continuation only exists to keep the exact gradient from turning."""
    with torch.no_grad():
        cos_clamped = cos_target.clamp(-1.0, 1.0)
        value = torch.cos(m1 * torch.acos(cos_clamped) + m2) - m3
        if easy_margin:
            value = torch.where(cos_clamped > 0, value, cos_clamped)
    return value + (cos_target - cos_target.detach())


def combined_margin_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    m1: float,
    m2: float,
    m3: float,
    easy_margin: bool = False,
    gradient: str = "exact",
) -> torch.Tensor:
    """s*(cos(m1*theta_y + m2) - m3) at the target, s*cos(theta_j) elsewhere. ``gradient`` "exact"
    differentiates the margined target (continued past pi, see ``angular_margin_target``);
    "straight_through" is arcface_torch's (see ``straight_through_margin_target``)."""
    check_cosine(cos, labels)
    cos = at_least_fp32(cos)
    target, has_target, columns = gather_target(cos, labels)
    if gradient == "straight_through":
        margined = straight_through_margin_target(target, m1, m2, m3, easy_margin)
    else:
        margined = angular_margin_target(target, m1, m2, m3, easy_margin)
    return scatter_target(s * cos, columns, has_target, s * margined)


def curricular_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    m: float,
    t: float | torch.Tensor,
    target_cos: torch.Tensor | None = None,
) -> torch.Tensor:
    """CurricularFace logits; the only head that also changes non-target logits.

    Target: s*cos(theta_y + m) (continued past pi like ArcFace).  Non-target j with
    cos(theta_j) > cos(theta_y + m) (a "hard" negative) becomes s*cos(theta_j)*(t + cos(theta_j)),
    the others stay s*cos(theta_j).

    ``target_cos [B]`` is for a sharded classifier: each row's target cosine gathered from
    whichever shard holds it, so that hard negatives on every shard are judged against the same
    threshold.  Without it, rows labelled -1 have no threshold and are left untouched.
    """
    check_cosine(cos, labels)
    cos = at_least_fp32(cos)
    target, has_target, columns = gather_target(cos, labels)
    margined = angular_margin_target(target, 1.0, m)
    with torch.no_grad():
        if target_cos is None:
            threshold, has_threshold = margined, has_target
        else:
            if target_cos.shape != labels.shape:
                raise ValueError(f"target_cos must have shape {list(labels.shape)}, got {list(target_cos.shape)}")
            threshold = angular_margin_target(at_least_fp32(target_cos), 1.0, m)
            has_threshold = torch.ones_like(has_target)
        hard = (cos > threshold.unsqueeze(1)) & has_threshold.unsqueeze(1)
    emphasised = torch.where(hard, cos * (t + cos), cos)
    return scatter_target(s * emphasised, columns, has_target, s * margined)


class CosFaceHead(MarginHead):
    r"""CosFace (large margin cosine loss): target :math:`s(\cos\theta_y - m)`, others :math:`s\cos\theta_j`.

    Wang et al., CVPR 2018, Eq. 4.  Defaults ``s=64, m=0.35``.
    """

    HYPERPARAMETERS = {"s": float, "m": float}

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes)
        check_positive("s", s)
        check_non_negative("m", m)
        self.s, self.m = float(s), float(m)

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        return cosface_logits(cos, labels, self.s, self.m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}"


class CombinedMarginHead(MarginHead):
    r"""Combined margin: target :math:`s(\cos(m_1\theta_y + m_2) - m_3)`, others :math:`s\cos\theta_j`.

    insightface's convention (Deng et al., CVPR 2019, Sec. 3.3 / Eq. 4): m1 multiplicative angular
    (SphereFace-like), m2 additive angular (ArcFace), m3 additive cosine (CosFace).
    Defaults ``s=64, m1=1, m2=0.5, m3=0`` (= ArcFace); the old repository's "MultiMargin" is
    ``m1=1, m2=0.2, m3=0.35``.  Past m1*theta + m2 = pi the target continues as
    cos(theta) - cos(theta*) - 1 with theta* = (pi - m2)/m1, which keeps it continuous and
    decreasing in theta; ``easy_margin=True`` instead applies the angular part only where cos > 0.
    """

    HYPERPARAMETERS = {"s": float, "m1": float, "m2": float, "m3": float, "easy_margin": bool, "gradient": str}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m1: float = 1.0,
        m2: float = 0.5,
        m3: float = 0.0,
        easy_margin: bool = False,
        gradient: str = "exact",
    ) -> None:
        super().__init__(embedding_size, num_classes)
        check_positive("s", s)
        check_positive("m1", m1)
        check_non_negative("m2", m2)
        check_non_negative("m3", m3)
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be True or False, got {easy_margin!r}")
        if gradient not in MARGIN_GRADIENTS:
            raise UnknownName("margin gradient", gradient, MARGIN_GRADIENTS)
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin, self.gradient = easy_margin, gradient

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        return combined_margin_logits(cos, labels, self.s, self.m1, self.m2, self.m3, self.easy_margin, self.gradient)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, "
            f"easy_margin={self.easy_margin}, gradient={self.gradient}"
        )


class ArcFaceHead(CombinedMarginHead):
    r"""ArcFace (additive angular margin): target :math:`s\cos(\theta_y + m)`, others :math:`s\cos\theta_j`.

    Deng et al., CVPR 2019, Eq. 3.  Defaults ``s=64, m=0.5, easy_margin=False``.
    For theta_y > pi - m, where cos(theta_y + m) would start rising again, the target is
    :math:`\cos\theta_y - (1 - \cos m)`: continuous at theta_y = pi - m (value -1) and decreasing.
    ``easy_margin=True`` uses cos(theta_y + m) only where cos(theta_y) > 0 and cos(theta_y) elsewhere.
    ``gradient="straight_through"`` is arcface_torch's: the same value without the continuation,
    d(logit)/d(cos) = s for the target as for the others (``straight_through_margin_target``); every
    ArcFace model arcface_torch published was trained so. The default, "exact", differentiates
    cos(theta_y + m), as the paper's formula and the old repository do.
    """

    HYPERPARAMETERS = {"s": float, "m": float, "easy_margin": bool, "gradient": str}

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False,
        gradient: str = "exact",
    ) -> None:
        check_non_negative("m", m)
        super().__init__(embedding_size, num_classes, s=s, m1=1.0, m2=m, m3=0.0, easy_margin=easy_margin,
                         gradient=gradient)
        self.m = float(m)

    def extra_repr(self) -> str:
        return (f"{MarginHead.extra_repr(self)}, s={self.s}, m={self.m}, easy_margin={self.easy_margin}, "
                f"gradient={self.gradient}")


class CurricularFaceHead(MarginHead):
    r"""CurricularFace: ArcFace target plus curriculum re-weighting of hard negatives.

    Huang et al., CVPR 2020, Eq. 8-10.  Target :math:`s\cos(\theta_y + m)` (continued past pi like
    ArcFace); a negative with :math:`\cos\theta_j > \cos(\theta_y + m)` becomes
    :math:`s\cos\theta_j\,(t + \cos\theta_j)`, other negatives stay :math:`s\cos\theta_j`.
    This is the one head that changes non-target logits, by design.  t is a buffer, an EMA of the
    mean target cosine, t <- momentum*mean(cos theta_y) + (1 - momentum)*t, updated (without
    gradient) before the logits are computed on each training-mode forward; t starts at 0.
    Defaults ``s=64, m=0.5, momentum=0.01`` (the paper's alpha = 0.99 weights the old t).

    The paper's code marks hard negatives with the raw cos(theta_y + m); here the threshold is the
    margined target logit itself (the continued value once theta_y > pi - m), the paper's Eq. 9.
    """

    HYPERPARAMETERS = {"s": float, "m": float, "momentum": float}
    shares_target_cosine = True

    def __init__(
        self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5, momentum: float = 0.01
    ) -> None:
        super().__init__(embedding_size, num_classes)
        check_positive("s", s)
        check_non_negative("m", m)
        if not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.s, self.m, self.momentum = float(s), float(m), float(momentum)
        self.register_buffer("t", torch.zeros(()))

    @torch.no_grad()
    def update_statistics(self, cos, labels, norms, target_cos, split) -> None:
        """Fold the mean target cosine of the global batch (rows that have a target) into t.

        Masked arithmetic instead of boolean indexing keeps this free of host syncs; a batch with
        no valid row leaves t unchanged."""
        if target_cos is None:
            target, valid, _ = gather_target(at_least_fp32(cos), labels)
        else:  # gathered from every shard: every row has its target on one of them
            target, valid = target_cos, torch.ones_like(labels, dtype=torch.bool)
        if split is not None:
            target, valid = split.all_rows(target), split.all_rows(valid.to(target.dtype)) > 0
        count = valid.sum()
        mean = torch.where(valid, target, 0.0).sum() / count.clamp(min=1)
        blended = (1.0 - self.momentum) * self.t + self.momentum * mean.to(self.t.dtype)
        self.t.copy_(torch.where(count > 0, blended, self.t))

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        return curricular_logits(cos, labels, self.s, self.m, self.t, target_cos)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, momentum={self.momentum}"
