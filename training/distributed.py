"""One or many processes: process-group set-up, and the classifier that can be sharded over ranks.

Launch with `torchrun --nproc_per_node=G train.py ...` (add --nnodes/--node_rank/--master_addr for
several machines). Nothing here runs at import time: `init_distributed` is called from main().

The sharded classifier follows Partial FC (An et al., ICCVW 2021, "Partial FC: Training 10 Million
Identities on a Single Machine"): rank r holds the class centres [start_r, end_r) of a contiguous
split; embeddings and labels of the whole global batch are all-gathered; every rank computes the
logits of its own classes, and the softmax normaliser (max and sum of exponentials) is all-reduced,
so the loss equals the unsharded cross-entropy while no rank ever holds [B, C]. With sample_rate < 1
each rank keeps, per step, its classes present in the batch plus a random subset of the others.
"""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from margin.base import at_least_fp32
from runtime import resolve_device


@dataclass
class DistributedContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); init NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistributedContext(rank, world, local_rank, target)


def all_reduce_mean(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= context.world
    return value


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own rows, times the world
    size: DDP then averages the backbone's gradients over ranks, and the sharded loss is already the
    mean over the whole global batch, so the product restores the exact full-batch gradient."""

    @staticmethod
    def forward(ctx, tensor):
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(ctx.world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = grad.shape[0] // ctx.world
        return grad[ctx.rank * rows:(ctx.rank + 1) * rows] * ctx.world


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the global batch from each rank's slice of the logits.

    forward(logits [N, C_r], local_target [N] (-1 where the class is on another rank)) ->
    (loss, fraction of samples whose arg-max class is their label). The normaliser is all-reduced;
    backward is softmax - one-hot on the local columns, divided by N (no further communication)."""

    @staticmethod
    def forward(ctx, logits, local_target):
        logits = at_least_fp32(logits)
        row_max = logits.max(dim=1).values
        global_max = row_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX)
        exp = torch.exp(logits - global_max[:, None])
        normaliser = exp.sum(dim=1)
        dist.all_reduce(normaliser)
        has_target = local_target >= 0
        rows = torch.arange(logits.shape[0], device=logits.device)
        target_logit = torch.where(has_target, logits[rows, local_target.clamp(min=0)], 0.0)
        dist.all_reduce(target_logit)
        loss = (torch.log(normaliser) + global_max - target_logit).mean()
        # correct when the row's global maximum sits in the label's column (ties count as correct)
        correct = (has_target & (target_logit >= global_max)).float()
        dist.all_reduce(correct)
        ctx.save_for_backward(exp / normaliser[:, None], local_target)
        return loss, correct.mean()

    @staticmethod
    def backward(ctx, grad_loss, _grad_accuracy):
        probabilities, local_target = ctx.saved_tensors
        grad = probabilities
        has_target = local_target >= 0
        rows = torch.nonzero(has_target).squeeze(1)
        grad[rows, local_target[rows]] -= 1.0
        return grad * (grad_loss / grad.shape[0]), None


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of the classes rank `rank` holds: contiguous, sizes differ by at most one."""
    return num_classes * rank // world, num_classes * (rank + 1) // world


class ShardedClassifier(nn.Module):
    """A margin head over this rank's shard of the classes; `forward(local embeddings, local labels)
    -> (loss, train accuracy)`, both over the global batch and identical on every rank.

    Given a single-process context it is the ordinary, unsharded head with its cross-entropy (and
    optional class sampling); train.py wraps that in DDP when several processes share one head."""

    def __init__(self, make_head, num_classes: int, context: DistributedContext,
                 sample_rate: float = 1.0, seed: int = 0):
        super().__init__()
        self.start, self.end = shard_range(num_classes, context.rank, context.world)
        self.num_classes = num_classes
        self.head = make_head(self.end - self.start)
        self.head.reset_parameters(self.start, seed)  # the head's own initialisation, seeded per class
        if sample_rate < 1.0 and not self.head.cosine_margin:
            raise ValueError(f"sample_rate < 1 needs a cosine margin head; {type(self.head).__name__} has none")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must lie in (0, 1]")
        self.context = context
        self.sample_rate = sample_rate
        self.seed = seed
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step
        self.head.set_step(step)

    def _sampled_logits(self, embeddings, local_labels):
        """Logits on the local positive classes plus random negatives (Partial FC's sampling)."""
        local_count = self.end - self.start
        keep = max(1, int(round(self.sample_rate * local_count)))
        positive = torch.zeros(local_count, dtype=torch.bool, device=embeddings.device)
        positive[local_labels[local_labels >= 0]] = True
        generator = torch.Generator(device="cpu").manual_seed(
            (self.seed * 1_000_003 + self.step) * 4096 + self.context.rank)
        score = torch.rand(local_count, generator=generator).to(embeddings.device) + positive.float() * 2
        index = score.topk(max(keep, int(positive.sum()))).indices.sort().values
        remap = torch.full((local_count,), -1, dtype=torch.long, device=embeddings.device)
        remap[index] = torch.arange(index.numel(), device=embeddings.device)
        sampled_labels = torch.where(local_labels >= 0, remap[local_labels.clamp(min=0)], local_labels)
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.head.weight[index], dim=1))
        return self.head.margin_logits(cos, sampled_labels, embeddings.norm(dim=1)), sampled_labels

    def _logits_with_global_targets(self, embeddings, local_labels):
        """For heads that judge non-target logits against the target's (CurricularFace): every
        row's target cosine lives on exactly one rank; an all-reduce gives it to all, so the
        hard-negative threshold and the running statistics equal the unsharded head's."""
        cos = self.head.cosine(embeddings)
        with torch.no_grad():
            rows = torch.arange(cos.shape[0], device=cos.device)
            target = torch.where(local_labels >= 0, cos[rows, local_labels.clamp(min=0)], 0.0)
            target = at_least_fp32(target)
            dist.all_reduce(target)
            if self.head.training:
                self.head.update_statistics(target)
        return self.head.margin_logits(cos, local_labels, target_cos=target)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        all_embeddings = _GatherWithGradient.apply(embeddings) if self.context.enabled else embeddings
        if self.context.enabled:
            parts = [torch.empty_like(labels) for _ in range(self.context.world)]
            dist.all_gather(parts, labels)
            labels = torch.cat(parts)
        on_shard = (labels >= self.start) & (labels < self.end)
        local_labels = torch.where(on_shard, labels - self.start, torch.full_like(labels, -1))
        if self.sample_rate < 1.0:
            logits, local_labels = self._sampled_logits(all_embeddings, local_labels)
        elif self.context.enabled and self.head.shares_target_cosine:
            logits = self._logits_with_global_targets(all_embeddings, local_labels)
        else:
            logits = self.head(all_embeddings, local_labels)
        if not self.context.enabled:
            logits = at_least_fp32(logits)
            loss = F.cross_entropy(logits, local_labels)
            return loss, (logits.argmax(dim=1) == local_labels).float().mean()
        return _ShardedCrossEntropy.apply(logits, local_labels)

    def full_state(self) -> dict:
        """The head's state with the class-centre rows of every rank, in class order (all ranks call)."""
        return {name: self.gather_rows(value) for name, value in self.head.state_dict().items()}

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor:
        """Concatenate a per-class tensor (first dim = local classes) over ranks; others as they are."""
        if not (self.context.enabled and value.dim() >= 1 and value.shape[0] == self.end - self.start):
            return value.detach().cpu()
        largest = -(-self.num_classes // self.context.world)
        padded = value.new_zeros((largest, *value.shape[1:]))
        padded[:value.shape[0]] = value.detach()
        parts = [torch.empty_like(padded) for _ in range(self.context.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:end - start] for part, (start, end) in zip(
            parts, (shard_range(self.num_classes, r, self.context.world) for r in range(self.context.world)))]).cpu()

    def local_rows(self, value: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full per-class tensor (the inverse of gather_rows)."""
        if value.dim() >= 1 and value.shape[0] == self.num_classes:
            return value[self.start:self.end]
        return value

    def load_full_state(self, state: dict) -> None:
        self.head.load_state_dict({name: self.local_rows(value) for name, value in state.items()})
