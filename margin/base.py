"""Shared machinery of the classification heads: input checks, target gather/scatter, safe angles.

Every margin head in this package is split in two layers so that a sharded classifier (Partial FC,
An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021) can reuse
the math unchanged:

* a *margin function* that takes a cosine matrix ``cos [B, C_local]`` (plus, for some heads, the
  feature norms ``[B]``) and ``labels [B]`` whose value ``-1`` means "this sample's class is not
  among these columns" (the row is then left unmargined), and returns the logits;
* a head module (a subclass of :class:`MarginHead`) that owns the full class-centre matrix
  ``weight [C, D]``, computes ``cos = normalize(x) @ normalize(W).T`` and calls that function.

The margin is applied with one ``gather`` of the target column and one ``scatter`` back; no dense
``[B, C]`` one-hot tensor is built, which matters at 100,000+ classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Lower bound on sin^2(theta) before the square root: keeps d sqrt/dx finite at cos = +-1 while
# changing no value that fp32 or fp64 can resolve (their smallest non-zero 1 - cos^2 is ~1e-16).
# (torch 2.14's clamp(-1, 1) happens to pass zero gradient at exactly +-1 as well, but that is an
# implementation detail that has changed between releases, so it is not relied on.)
_MIN_SIN_SQUARED = 1e-30


def check_labels(labels: torch.Tensor, batch_size: int, num_columns: int, allow_missing: bool = True) -> None:
    """Raise a clear error unless ``labels`` is int64 ``[batch_size]`` with values in
    [-1, num_columns) (or [0, num_columns) when ``allow_missing`` is False).

    The range check reads the label extremes back from the device (one host sync per call); without it
    an out-of-range label would surface on a GPU as an opaque device-side assert.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of dtype int64, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must have dtype torch.int64, got {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape [{batch_size}] to match the batch, got {list(labels.shape)}")
    if labels.numel() > 0:
        lowest, highest = torch.stack(torch.aminmax(labels)).tolist()
        smallest_allowed = -1 if allow_missing else 0
        if lowest < smallest_allowed or highest >= num_columns:
            meaning = " (-1 = class not among these columns)" if allow_missing else ""
            raise ValueError(
                f"labels must lie in [{smallest_allowed}, {num_columns}){meaning}, "
                f"got values in [{lowest}, {highest}]"
            )


def check_cosine(cos: torch.Tensor, labels: torch.Tensor) -> None:
    """Check that ``cos`` is a floating ``[B, C]`` matrix and ``labels`` fits it."""
    if cos.dim() != 2 or not cos.is_floating_point():
        raise ValueError(f"cos must be a floating-point [B, C] matrix, got {cos.dtype} of shape {list(cos.shape)}")
    check_labels(labels, cos.shape[0], cos.shape[1])


def at_least_fp32(values: torch.Tensor) -> torch.Tensor:
    """Upcast bf16/fp16 to fp32 (margins are computed in fp32), leaving fp32 and fp64 as they are."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def gather_target(cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(target_cos [B], has_target [B] bool, columns [B, 1])``.

    Rows labelled -1 read column 0 as a placeholder (always a valid index, so no data-dependent
    indexing and no host sync); ``has_target`` marks them so that their value is never changed.
    """
    has_target = labels >= 0
    columns = labels.clamp(min=0).unsqueeze(1)
    return cos.gather(1, columns).squeeze(1), has_target, columns


def scatter_target(
    logits: torch.Tensor, columns: torch.Tensor, has_target: torch.Tensor, target_logits: torch.Tensor
) -> torch.Tensor:
    """Write ``target_logits`` into the target column of each row that has one (out of place).

    Rows without a target get their own placeholder value written back, so they are unchanged,
    and autograd routes their gradient to that entry as if nothing had happened.
    """
    kept = logits.gather(1, columns).squeeze(1)
    new_values = torch.where(has_target, target_logits.to(logits.dtype), kept)
    return logits.scatter(1, columns, new_values.unsqueeze(1))


def safe_angle(cos: torch.Tensor) -> torch.Tensor:
    """theta = arccos(cos) in [0, pi], with finite gradients at cos = +-1.

    arccos has derivative -1/sqrt(1 - cos^2), infinite at cos = +-1 (which is reached exactly,
    e.g. by a feature lying on its class centre).  Writing theta = atan2(sin, cos) with
    sin = sqrt(max((1 - cos)(1 + cos), tiny)) gives the same value (to within 1e-15) and a
    gradient that is the exact one wherever sin^2 > tiny and merely small (not infinite) at the
    ends.  (1 - cos)(1 + cos) instead of 1 - cos^2 avoids cancellation near cos = 1.
    """
    cos = cos.clamp(-1.0, 1.0)
    sin = ((1.0 - cos) * (1.0 + cos)).clamp(min=_MIN_SIN_SQUARED).sqrt()
    return torch.atan2(sin, cos)


def angular_margin_target(
    cos_target: torch.Tensor,
    m1: float | torch.Tensor = 1.0,
    m2: float | torch.Tensor = 0.0,
    m3: float | torch.Tensor = 0.0,
    easy_margin: bool = False,
) -> torch.Tensor:
    """Margined target cosine cos(m1*theta + m2) - m3, continued monotonically past m1*theta + m2 = pi.

    cos(m1*theta + m2) stops decreasing once m1*theta + m2 passes pi (at theta* = (pi - m2)/m1),
    which would reward a sample for moving *away* from its centre.  For theta > theta* this uses
    the continuation

        phi(theta) = cos(theta) - cos(theta*) - 1,

    i.e. an additive cosine penalty sized so that phi(theta*) = cos(pi) = -1: continuous, and
    strictly decreasing on [0, pi].  (insightface's classic fallback cos(theta) - m*sin(m) with the
    same switch point is also decreasing, but jumps by m*sin(m) - (1 - cos(m)), 0.117 at m = 0.5.)

    With ``easy_margin`` the angular part applies only where cos(theta) > 0 and cos(theta) is used
    elsewhere (insightface's option; this curve jumps up at theta = pi/2, so it is not monotone).

    ``m1, m2, m3`` may be per-row tensors ``[B]`` (MagFace's norm-dependent margin).
    """
    cos_target = cos_target.clamp(-1.0, 1.0)
    theta = safe_angle(cos_target)
    margined = torch.cos(m1 * theta + m2)
    if easy_margin:
        margined = torch.where(cos_target > 0, margined, cos_target)
    else:
        theta_limit = (math.pi - torch.as_tensor(m2, dtype=cos_target.dtype, device=cos_target.device)) / m1
        continued = cos_target - torch.cos(theta_limit) - 1.0
        margined = torch.where(theta <= theta_limit, margined, continued)
    return margined - m3


def check_positive(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite number >= 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


CLASS_BLOCK = 4096  # classes per independently seeded block of initial values


@torch.no_grad()
def fill_class_rows(values: torch.Tensor, first_class: int, seed: int, draw) -> None:
    """Fill `values` (one row per class, for classes first_class, first_class + 1, ...) so that the
    row of class i depends on (seed, i) only: a head split over any number of ranks starts exactly as
    the whole head. `draw(generator, shape)` returns random values of `shape` on the CPU."""
    rows = values.shape[0]
    for block in range(first_class // CLASS_BLOCK, (first_class + rows - 1) // CLASS_BLOCK + 1):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
        drawn = draw(generator, (CLASS_BLOCK, *values.shape[1:]))
        first, last = max(first_class, block * CLASS_BLOCK), min(first_class + rows, (block + 1) * CLASS_BLOCK)
        values[first - first_class:last - first_class] = drawn[first - block * CLASS_BLOCK:last - block * CLASS_BLOCK]


class MarginHead(nn.Module):
    """Base class of every head: owns ``weight [num_classes, embedding_size]``.

    The training loop computes
    ``loss = F.cross_entropy(head(x, y), y) + head.regularizer(x)`` and calls
    ``head.set_step(step)`` before each step; both hooks do nothing unless a head overrides them.

    What a head declares for the code that builds and shards it:
    ``HYPERPARAMETERS`` maps each constructor option to its type (build_margin checks and casts to it);
    ``cosine_margin``: the head has ``margin_logits(cos, labels, norms)``, so a sharded head may
    compute it on a sampled subset of class columns; ``shares_target_cosine``: its non-target logits
    depend on the target cosine (``margin_logits(..., target_cos=)``, ``update_statistics``), which a
    sharded head must then all-reduce.
    """

    HYPERPARAMETERS: dict[str, type] = {}
    cosine_margin = True
    shares_target_cosine = False

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        for name, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        MarginHead.reset_parameters(self)  # subclasses with more parameters re-initialise in their own __init__

    def reset_parameters(self, first_class: int = 0, seed: int | None = None) -> None:
        """Initial class centres N(0, 0.01) (only their direction matters to a cosine head;
        insightface's std); with `seed`, row i is drawn from (seed, first_class + i)."""
        if seed is None:
            nn.init.normal_(self.weight, std=0.01)
        else:
            fill_class_rows(self.weight, first_class, seed, lambda g, shape: torch.randn(shape, generator=g) * 0.01)

    def check_embeddings(self, embeddings: torch.Tensor) -> None:
        """Raise unless ``embeddings`` is a floating ``[B, embedding_size]`` tensor."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape [B, {self.embedding_size}], got {list(embeddings.shape)}"
            )
        if not embeddings.is_floating_point():
            raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) [B, C] between each embedding and each class centre."""
        self.check_embeddings(embeddings)
        return F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))

    def regularizer(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Extra loss term added to the cross-entropy; zero unless the head defines one."""
        return embeddings.new_zeros(())

    def set_step(self, step: int) -> None:
        """Tell the head the current training iteration; only heads with schedules use it."""

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"
