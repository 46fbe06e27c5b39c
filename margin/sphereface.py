"""SphereFace / A-Softmax: multiplicative angular margin with an annealed softmax blend.

Paper: Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", CVPR 2017
(Eq. 7 for psi, Sec. 3.4 and the released Caffe layer ``MarginInnerProduct`` for the lambda blend
and its schedule).
"""

from __future__ import annotations

import math

import torch

from margin.base import (
    MarginHead,
    at_least_fp32,
    check_cosine,
    check_positive,
    gather_target,
    scatter_target,
)


def chebyshev_cos_multiple(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m*theta) as the Chebyshev polynomial T_m(cos theta) (e.g. T_4 = 8c^4 - 8c^2 + 1).

    A polynomial in cos theta has finite derivatives everywhere, including cos theta = +-1, where
    going through theta = arccos(cos) would not.
    """
    previous, current = torch.ones_like(cos), cos
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current


def sphereface_psi(cos: torch.Tensor, m: int) -> torch.Tensor:
    """psi(theta) = (-1)^k cos(m*theta) - 2k for theta in [k*pi/m, (k+1)*pi/m], k = 0..m-1.

    psi is continuous and decreasing on [0, pi], from 1 to 1 - 2m.  k is piecewise constant, so it
    is computed without gradient; at a piece boundary both pieces agree, so rounding there is harmless.
    """
    cos = cos.clamp(-1.0, 1.0)
    with torch.no_grad():
        k = torch.floor(m * torch.acos(cos) / math.pi).clamp(0, m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    return sign * chebyshev_cos_multiple(cos, m) - 2.0 * k


def sphereface_logits(
    cos: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor, m: int, lambda_: float
) -> torch.Tensor:
    """A-Softmax logits: ||x||*(lambda*cos(theta_y) + psi(theta_y))/(1 + lambda) at the target,
    ||x||*cos(theta_j) elsewhere (class weights normalised, feature norm kept)."""
    check_cosine(cos, labels)
    if norms.shape != labels.shape:
        raise ValueError(f"norms must have shape {list(labels.shape)}, got {list(norms.shape)}")
    cos = at_least_fp32(cos)
    norms = at_least_fp32(norms)
    target, has_target, columns = gather_target(cos, labels)
    blended = (lambda_ * target.clamp(-1.0, 1.0) + sphereface_psi(target, m)) / (1.0 + lambda_)
    return scatter_target(norms.unsqueeze(1) * cos, columns, has_target, norms * blended)


def sphereface_lambda(step: int, lambda_base: float, gamma: float, power: float, lambda_min: float) -> float:
    """lambda = max(lambda_min, lambda_base * (1 + gamma*step)^(-power))."""
    return max(lambda_min, lambda_base * (1.0 + gamma * step) ** (-power))


class SphereFaceHead(MarginHead):
    r"""SphereFace (A-Softmax, multiplicative angular margin).

    Liu et al., CVPR 2017.  With :math:`\psi(\theta) = (-1)^k\cos(m\theta) - 2k` for
    :math:`\theta\in[k\pi/m, (k+1)\pi/m]` (cos(m theta) from the Chebyshev polynomial of cos theta),
    the target logit is :math:`\|x\|\,(\lambda\cos\theta_y + \psi(\theta_y))/(1+\lambda)` and the
    others :math:`\|x\|\cos\theta_j` (weights normalised, features not).  No scale s: the feature
    norm plays its role.

    lambda anneals from the plain softmax towards the margin:
    :math:`\lambda = \max(\lambda_{min}, \lambda_{base}(1 + \gamma\,\mathrm{step})^{-power})`,
    set by :meth:`set_step` (the training loop calls it with the iteration number; before any call
    the head uses step 0, i.e. lambda = lambda_base).  The released Caffe layer increments its
    counter before use, so its i-th forward sees step i + 1; a one-step shift.

    Defaults: ``m=4``, ``lambda_base=1000, gamma=0.12, power=1, lambda_min=5`` (the released
    SphereFace prototxt).  The old repository's schedule is ``gamma=1e-4, power=2``.
    """

    HYPERPARAMETERS = {"m": int, "lambda_base": float, "gamma": float, "power": float, "lambda_min": float}

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        m: int = 4,
        lambda_base: float = 1000.0,
        gamma: float = 0.12,
        power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__(embedding_size, num_classes)
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise ValueError(f"m must be an integer >= 1 (SphereFace's margin multiplies the angle), got {m!r}")
        check_positive("lambda_base", lambda_base)
        for name, value in (("gamma", gamma), ("power", power), ("lambda_min", lambda_min)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.m = m
        self.lambda_base, self.gamma = float(lambda_base), float(gamma)
        self.power, self.lambda_min = float(power), float(lambda_min)
        self.step = 0
        self.lambda_ = sphereface_lambda(0, self.lambda_base, self.gamma, self.power, self.lambda_min)

    def set_step(self, step: int) -> None:
        """Set the training iteration and recompute lambda from it."""
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self.step = step
        self.lambda_ = sphereface_lambda(step, self.lambda_base, self.gamma, self.power, self.lambda_min)

    def margin_logits(self, cos, labels, norms=None, target_cos=None) -> torch.Tensor:
        if norms is None:
            raise ValueError("SphereFace needs the feature norms [B]: its logits are ||x||*cos")
        return sphereface_logits(cos, norms, labels, self.m, self.lambda_)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, m={self.m}, lambda_base={self.lambda_base}, gamma={self.gamma}, "
            f"power={self.power}, lambda_min={self.lambda_min}, step={self.step}"
        )
