"""Feature-norm-adaptive margins: AdaFace and MagFace.

Papers:
* AdaFace: Kim et al., "AdaFace: Quality Adaptive Margin for Face Recognition", CVPR 2022
  (Eq. 11-12; clipping and statistics details from the authors' released ``head.py``).
* MagFace: Meng et al., "MagFace: A Universal Representation for Face Recognition and Quality
  Assessment", CVPR 2021 (Eq. 3-5; defaults from the authors' ``run/run.sh`` and ``models/magface.py``).

Both heads read the feature norm ||z|| of each embedding, so their ``margin_logits`` require the
norms ``[B]`` as well as the cosine matrix.
"""

from __future__ import annotations

import math
import warnings

import torch

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

# AdaFace's released code: cosines kept this far from +-1 before arccos, the margined angle kept in
# [eps, pi - eps], and eps added to the norm standard deviation.
ADAFACE_EPS = 1e-3
# ... and feature norms clipped to this range before they enter the statistics.
ADAFACE_NORM_RANGE = (1e-3, 100.0)


def _check_norms(norms: torch.Tensor | None, labels: torch.Tensor, head: str) -> torch.Tensor:
    if norms is None:
        raise ValueError(f"{head} needs the feature norms [B]: its margin depends on ||x||")
    if norms.shape != labels.shape:
        raise ValueError(f"norms must have shape {list(labels.shape)}, got {list(norms.shape)}")
    return at_least_fp32(norms)


def adaface_norm_scaler(
    norms: torch.Tensor, norm_mean: torch.Tensor, norm_std: torch.Tensor, h: float
) -> torch.Tensor:
    """z_hat = clip((||z|| - mu) / (sigma + eps) * h, -1, 1), computed on clipped, detached norms."""
    safe_norms = norms.detach().clamp(*ADAFACE_NORM_RANGE)
    return ((safe_norms - norm_mean) / (norm_std + ADAFACE_EPS) * h).clamp(-1.0, 1.0)


def adaface_logits(
    cos: torch.Tensor,
    norms: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    m: float,
    h: float,
    norm_mean: torch.Tensor,
    norm_std: torch.Tensor,
) -> torch.Tensor:
    """AdaFace logits: s*(cos(clip(theta_y + g_angle, eps, pi - eps)) - g_add) at the target,
    s*cos(theta_j) elsewhere, with g_angle = -m*z_hat, g_add = m*z_hat + m."""
    check_cosine(cos, labels)
    norms = _check_norms(norms, labels, "AdaFace")
    cos = at_least_fp32(cos)
    target, has_target, columns = gather_target(cos, labels)
    scaler = adaface_norm_scaler(norms, norm_mean, norm_std, h)
    theta = torch.acos(target.clamp(-1.0 + ADAFACE_EPS, 1.0 - ADAFACE_EPS))
    theta_margined = (theta - m * scaler).clamp(ADAFACE_EPS, math.pi - ADAFACE_EPS)
    margined = torch.cos(theta_margined) - (m * scaler + m)
    return scatter_target(s * cos, columns, has_target, s * margined)


def magface_margin(norms: torch.Tensor, l_a: float, u_a: float, l_m: float, u_m: float) -> torch.Tensor:
    """m(a) = (u_m - l_m)/(u_a - l_a)*(a - l_a) + l_m with a = ||x|| clamped to [l_a, u_a]."""
    a = norms.clamp(l_a, u_a)
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_logits(
    cos: torch.Tensor,
    norms: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    l_a: float,
    u_a: float,
    l_m: float,
    u_m: float,
    easy_margin: bool = True,
) -> torch.Tensor:
    """MagFace logits: s*cos(theta_y + m(a)) at the target (easy margin or the monotone
    continuation of ``angular_margin_target``), s*cos(theta_j) elsewhere."""
    check_cosine(cos, labels)
    norms = _check_norms(norms, labels, "MagFace")
    cos = at_least_fp32(cos)
    target, has_target, columns = gather_target(cos, labels)
    margin = magface_margin(norms, l_a, u_a, l_m, u_m)
    margined = angular_margin_target(target, 1.0, margin, 0.0, easy_margin)
    return scatter_target(s * cos, columns, has_target, s * margined)


class AdaFaceHead(MarginHead):
    r"""AdaFace: a margin that adapts to image quality through the feature norm.

    Kim et al., CVPR 2022.  With :math:`\hat z = \mathrm{clip}((\|z\| - \mu)/(\sigma + \epsilon)\cdot h, -1, 1)`,
    :math:`g_{angle} = -m\hat z`, :math:`g_{add} = m\hat z + m`, the target logit is
    :math:`s(\cos(\mathrm{clip}(\theta_y + g_{angle}, \epsilon, \pi-\epsilon)) - g_{add})` and the
    others :math:`s\cos\theta_j`.  High-norm (good-quality) samples get an ArcFace-like angular
    margin, low-norm ones a CosFace-like additive one.

    Details taken from the authors' code: norms are clipped to [0.001, 100] and detached (no
    gradient flows through the margin); mu and sigma are EMAs of the batch mean and unbiased
    standard deviation of those norms, ``mu <- momentum*mean + (1 - momentum)*mu`` (same for
    sigma), starting at mu = 20, sigma = 100, updated before the logits on each training-mode
    forward (a batch of one leaves sigma alone); eps = 1e-3; theta_y = arccos of the target
    cosine clamped to [-1 + eps, 1 - eps].  Unlike that code, non-target cosines are not clamped,
    so they stay exactly s*cos(theta_j).
    Defaults ``s=64, m=0.4, h=0.333, momentum=0.01``.
    """

    HYPERPARAMETERS = {"s": float, "m": float, "h": float, "momentum": float}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        momentum: float = 0.01,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        check_positive("s", s)
        check_non_negative("m", m)
        check_positive("h", h)
        if not (isinstance(momentum, (int, float)) and 0 < momentum <= 1):
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}")
        self.s, self.m, self.h, self.momentum = float(s), float(m), float(h), float(momentum)
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    @torch.no_grad()
    def update_statistics(self, cos, labels, norms, target_cos, split) -> None:
        """Fold the mean and standard deviation of the (clipped) feature norms of the global batch into the EMAs."""
        if split is not None:
            norms = split.all_rows(norms)
        safe_norms = at_least_fp32(norms).clamp(*ADAFACE_NORM_RANGE)
        if safe_norms.numel() > 0:
            self.norm_mean.lerp_(safe_norms.mean().to(self.norm_mean.dtype), self.momentum)
        if safe_norms.numel() > 1:
            self.norm_std.lerp_(safe_norms.std().to(self.norm_std.dtype), self.momentum)

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        return adaface_logits(cos, norms, labels, self.s, self.m, self.h, self.norm_mean, self.norm_std)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s={self.s}, m={self.m}, h={self.h}, momentum={self.momentum}"


class MagFaceHead(MarginHead):
    r"""MagFace: an angular margin that grows with the feature norm, plus a norm regulariser.

    Meng et al., CVPR 2021.  With :math:`a = \mathrm{clamp}(\|x\|, l_a, u_a)` and
    :math:`m(a) = (u_m - l_m)/(u_a - l_a)\,(a - l_a) + l_m`, the target logit is
    :math:`s\cos(\theta_y + m(a))`, others :math:`s\cos\theta_j`; the gradient flows into the norm
    through m(a) as in the paper.  :meth:`regularizer` returns
    :math:`\lambda_g\,\mathrm{mean}(g(a))` with :math:`g(a) = 1/a + a/u_a^2`.

    ``easy_margin=True`` (the authors' ``MagLinear`` default) uses cos(theta_y) instead wherever
    cos(theta_y) <= 0; with ``easy_margin=False`` the target continues past theta_y + m(a) = pi
    as cos(theta_y) - (1 - cos m(a)), continuous and decreasing (see ``angular_margin_target``).
    Defaults (authors' training script): ``s=64, l_a=10, u_a=110, l_m=0.45, u_m=0.8, lambda_g=35``.
    The paper's convexity condition lambda_g >= s*k*u_a^2*l_a^2/(u_a^2 - l_a^2), k the margin
    slope, is checked with a warning (22.6 for the defaults).
    """

    HYPERPARAMETERS = {"s": float, "l_a": float, "u_a": float, "l_m": float, "u_m": float, "lambda_g": float,
                       "easy_margin": bool}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        check_positive("s", s)
        check_positive("l_a", l_a)
        check_non_negative("l_m", l_m)
        check_non_negative("lambda_g", lambda_g)
        if not (isinstance(u_a, (int, float)) and math.isfinite(u_a) and u_a > l_a):
            raise ValueError(f"u_a must be a finite number > l_a = {l_a}, got {u_a!r}")
        if not (isinstance(u_m, (int, float)) and math.isfinite(u_m) and u_m >= l_m):
            raise ValueError(f"u_m must be a finite number >= l_m = {l_m}, got {u_m!r}")
        if not isinstance(easy_margin, bool):
            raise ValueError(f"easy_margin must be True or False, got {easy_margin!r}")
        self.s, self.l_a, self.u_a = float(s), float(l_a), float(u_a)
        self.l_m, self.u_m, self.lambda_g = float(l_m), float(u_m), float(lambda_g)
        self.easy_margin = easy_margin
        slope = (self.u_m - self.l_m) / (self.u_a - self.l_a)
        min_lambda_g = self.s * slope * self.u_a**2 * self.l_a**2 / (self.u_a**2 - self.l_a**2)
        if self.lambda_g < min_lambda_g:
            warnings.warn(
                f"MagFace lambda_g={self.lambda_g} is below {min_lambda_g:.3f}, the bound under which the "
                "paper's loss is guaranteed a unique optimal feature norm",
                stacklevel=2,
            )

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        return magface_logits(cos, norms, labels, self.s, self.l_a, self.u_a, self.l_m, self.u_m, self.easy_margin)

    def regularizer(self, embeddings: torch.Tensor) -> torch.Tensor:
        """lambda_g * mean(1/a + a/u_a^2), a = ||x|| clamped to [l_a, u_a] as in the authors' code."""
        self.check_embeddings(embeddings)
        a = torch.linalg.vector_norm(at_least_fp32(embeddings), dim=1).clamp(self.l_a, self.u_a)
        return self.lambda_g * (1.0 / a + a / self.u_a**2).mean()

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, "
            f"u_m={self.u_m}, lambda_g={self.lambda_g}, easy_margin={self.easy_margin}"
        )
