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
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from runtime.errors import UnknownName

# Lower bound on sin^2(theta) before the square root: keeps d sqrt/dx finite at cos = +-1 while
# changing no value that fp32 or fp64 can resolve (their smallest non-zero 1 - cos^2 is ~1e-16).
# (torch 2.14's clamp(-1, 1) happens to pass zero gradient at exactly +-1 as well, but that is an
# implementation detail that has changed between releases, so it is not relied on.)
_MIN_SIN_SQUARED = 1e-30


def check_labels(labels: torch.Tensor, batch_size: int, num_columns: int, allow_missing: bool = True) -> None:
    """Raise a clear error unless ``labels`` is int64 ``[batch_size]`` with values in
    [-1, num_columns) (or [0, num_columns) when ``allow_missing`` is False).

    The range check reads the label extremes back, which on a GPU waits for everything queued before
    it; there it is left to whoever made the labels (train.py checks every training label against the
    class count before it starts), on the CPU it costs nothing and is always made.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of dtype int64, got {type(labels).__name__}")
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must have dtype torch.int64, got {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"labels must have shape [{batch_size}] to match the batch, got {list(labels.shape)}")
    if labels.numel() > 0 and labels.device.type == "cpu":
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


HEAD_INITS = ("default", "normal", "xavier_uniform")


def initial_rows(init: str, embedding_size: int, all_classes: int):
    """``draw(generator, shape)`` of the initial class centres of ``init`` (see MarginHead.reset_parameters)."""
    if init in ("default", "normal"):
        return lambda generator, shape: torch.randn(shape, generator=generator) * 0.01
    if init == "xavier_uniform":
        bound = math.sqrt(6.0 / (all_classes + embedding_size))
        return lambda generator, shape: torch.rand(shape, generator=generator) * (2 * bound) - bound
    raise UnknownName("head init", init, HEAD_INITS)


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


class Split:
    """How one call of a head relates to the same call on the other processes; None: it stands alone.

    ``Split("rows")``: the head is replicated (DDP) and each process holds its part of the global
    batch, every class column. ``Split("classes")``: the head is sharded (Partial FC) and every
    process holds the whole global batch (all-gathered), its own class columns; a row's target
    column lives on exactly one process. What a head computes from the batch (running statistics,
    CurricularFace's threshold) is shared through these methods, so that it equals one process
    computing over the global batch with every class.
    """

    KINDS = ("rows", "classes")

    def __init__(self, kind: str, group=None) -> None:
        if kind not in self.KINDS:
            raise UnknownName("head split", kind, self.KINDS)
        self.kind, self.group = kind, group

    @torch.no_grad()
    def all_rows(self, values: torch.Tensor) -> torch.Tensor:
        """``values [B_local, ...]`` of every row of the global batch, in rank order."""
        if self.kind != "rows":
            return values
        parts = [torch.empty_like(values) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, values.contiguous(), group=self.group)
        return torch.cat(parts)

    @torch.no_grad()
    def row_targets(self, cos: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(target cosine [B], has_target [B]) of each row, from whichever process holds its column."""
        target, has_target, _ = gather_target(at_least_fp32(cos), labels)
        if self.kind != "classes":
            return target, has_target
        target = torch.where(has_target, target, 0.0)
        count = has_target.to(target.dtype)
        dist.all_reduce(target, group=self.group)
        dist.all_reduce(count, group=self.group)
        return target, count > 0


def filter_interclass(cos: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """arcface_torch's inter-class filtering: a non-target cosine above ``threshold`` becomes 0, value and
    gradient (a "negative" that close to the sample is likely its own identity under another label).
    The target column of each row is never filtered; ``threshold`` 0 leaves ``cos`` as it is."""
    if threshold <= 0:
        return cos
    with torch.no_grad():
        keep = cos <= threshold
        rows = torch.nonzero(labels >= 0).squeeze(1)
        keep[rows, labels[rows]] = True
    return cos * keep


class MarginHead(nn.Module):
    """Base class of every head: owns ``weight [num_classes, embedding_size]``.

    ``forward(embeddings, labels, classes=None, split=None)`` is the one way into a head, for a
    replicated head, a sharded one and a sampled one alike: the cosine matrix of the embeddings
    against the class centres (``classes``: the rows of ``weight`` used, Partial FC's sample;
    ``labels`` then index into them, -1 = the row's class is not among them), arcface_torch's
    inter-class filtering when its threshold is set, the running statistics (training mode, shared
    over ``split``), then the head's ``margin_logits``. The training loop computes
    ``loss = F.cross_entropy(head(x, y), y) + head.regularizer(x)`` and calls
    ``head.set_step(step)`` before each step; both hooks do nothing unless a head overrides them.

    What a head declares for the code that builds and shards it:
    ``HYPERPARAMETERS`` maps each constructor option to its type (build_margin checks and casts to it);
    ``cosine_margin``: its logits are a margin applied to a cosine matrix
    (``margin_logits(cos, labels, norms, target_cos)``), which inter-class filtering needs;
    ``shares_target_cosine``: its non-target logits depend on each row's target cosine, which a
    sharded head must then gather from the process that holds it.
    """

    HYPERPARAMETERS: dict[str, type] = {}
    cosine_margin = True
    shares_target_cosine = False
    interclass_filtering_threshold = 0.0  # set by build_margin; 0 = off

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        for name, value in (("embedding_size", embedding_size), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        MarginHead.reset_parameters(self)  # subclasses with more parameters re-initialise in their own __init__

    def reset_parameters(self, first_class: int = 0, seed: int | None = None, init: str = "default",
                         all_classes: int | None = None) -> None:
        """Initial class centres. ``init``: "default" and "normal" draw N(0, 0.01) (arcface_torch's
        Partial FC; only the direction matters to a cosine head, the scale sets how fast it turns);
        "xavier_uniform" draws U(-a, a), a = sqrt(6 / (all_classes + embedding_size)) (the old
        repository's margin layers, over the whole class matrix). With ``seed``, row i is drawn from
        (seed, first_class + i), so that a head split over ranks starts as the whole head."""
        draw = initial_rows(init, self.embedding_size, all_classes or self.num_classes)
        if seed is None:
            with torch.no_grad():
                self.weight.copy_(draw(None, tuple(self.weight.shape)))
        else:
            fill_class_rows(self.weight, first_class, seed, draw)

    def check_embeddings(self, embeddings: torch.Tensor) -> None:
        """Raise unless ``embeddings`` is a floating ``[B, embedding_size]`` tensor."""
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings must have shape [B, {self.embedding_size}], got {list(embeddings.shape)}"
            )
        if not embeddings.is_floating_point():
            raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")

    def class_rows(self, classes: torch.Tensor | None) -> torch.Tensor:
        """The class centres used: all of ``weight``, or the rows ``classes`` (Partial FC's sample)."""
        return self.weight if classes is None else self.weight[classes]

    def cosine(self, embeddings: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """cos(theta) [B, C] between each embedding and each class centre (or each of ``classes``).

        Always an fp32 product (TF32 on a GPU where allowed), also under autocast: a cosine rounded to
        bf16 is off by ~1e-3 near 0.3, which s = 64 turns into ~0.1 of logit noise."""
        self.check_embeddings(embeddings)
        rows = self.class_rows(classes)
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, rows.dtype), torch.float32)
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.linear(F.normalize(embeddings.to(dtype), dim=1), F.normalize(rows.to(dtype), dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor | None = None,
                split: Split | None = None) -> torch.Tensor:
        """Logits [B, C] (or [B, len(classes)]); see the class docstring."""
        cos = self.cosine(embeddings, classes)
        check_cosine(cos, labels)
        cos = filter_interclass(cos, labels, self.interclass_filtering_threshold)
        norms = torch.linalg.vector_norm(at_least_fp32(embeddings), dim=1)
        target_cos = None
        if self.shares_target_cosine and split is not None:
            target_cos, _ = split.row_targets(cos, labels)
        if self.training:
            self.update_statistics(cos, labels, norms, target_cos, split)
        return self.margin_logits(cos, labels, norms, target_cos)

    def margin_logits(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor | None = None,
                      target_cos: torch.Tensor | None = None) -> torch.Tensor:
        """The head's logits from the cosine matrix (labels -1: no target among these columns), the
        feature norms [B] and, for heads that share it, each row's target cosine from every shard."""
        raise NotImplementedError

    def update_statistics(self, cos: torch.Tensor, labels: torch.Tensor, norms: torch.Tensor,
                          target_cos: torch.Tensor | None, split: Split | None) -> None:
        """Fold this batch into the head's running statistics (training mode only); none by default."""

    def regularizer(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Extra loss term added to the cross-entropy; zero unless the head defines one."""
        return embeddings.new_zeros(())

    def set_step(self, step: int) -> None:
        """Tell the head the current training iteration; only heads with schedules use it."""

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}"
