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

from margin.base import Split, at_least_fp32
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
    """A margin head and its cross-entropy; `forward(local embeddings, local labels) -> (loss, train
    accuracy)`, both over the global batch and identical on every rank.

    With `sharded` (Partial FC) rank r holds the classes [start_r, end_r) and sees the whole global
    batch; otherwise the head is whole on every rank (train.py wraps it in DDP) and sees its rank's
    rows. Either way the head is called once per micro-batch through its one entry point,
    `head(embeddings, labels, classes, split)`, which shares across ranks what the head needs.
    With sample_rate < 1 each call keeps the classes of the global batch that this rank holds plus
    random others, int(sample_rate x classes held) in all (arcface_torch's PartialFC_V2.sample)."""

    def __init__(self, make_head, num_classes: int, context: DistributedContext, sharded: bool = False,
                 sample_rate: float = 1.0, seed: int = 0, init: str = "default"):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must lie in (0, 1]")
        self.sharded = sharded and context.enabled
        self.shard_rank = context.rank if self.sharded else 0
        self.start, self.end = shard_range(num_classes, self.shard_rank, context.world if self.sharded else 1)
        self.num_classes = num_classes
        self.head = make_head(self.end - self.start)
        self.head.reset_parameters(self.start, seed, init, num_classes)  # seeded per class: any split starts alike
        self.context = context
        self.split = Split("classes" if self.sharded else "rows") if context.enabled else None
        self.sample_rate = sample_rate
        self.seed = seed
        self.step = 0
        self.calls = 0  # forward calls in this step: each micro-batch draws its own sample

    def set_step(self, step: int) -> None:
        self.step, self.calls = step, 0
        self.head.set_step(step)

    def sampling_scores(self, step: int, call: int) -> torch.Tensor:
        """The random score [classes held] of each class for a step's `call`-th micro-batch; a
        function of (seed, step, call, shard), so that a resumed run draws the same samples."""
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + step) * 64 + call) * 4096 + self.shard_rank)
        return torch.rand(self.end - self.start, generator=generator)

    def sample(self, local_labels: torch.Tensor, all_labels: torch.Tensor):
        """(classes [K], labels re-indexed into them): this rank's classes among `all_labels` (the
        global batch's), then the highest-scoring others, K = max(int(sample_rate x classes held),
        positives), in increasing class order (arcface_torch's PartialFC_V2.sample)."""
        held = self.end - self.start
        keep = max(1, int(self.sample_rate * held))  # arcface_torch would fail on an empty sample
        on_shard = (all_labels >= self.start) & (all_labels < self.end)
        positive = torch.zeros(held + 1, dtype=torch.bool, device=local_labels.device)
        positive[torch.where(on_shard, all_labels - self.start, held)] = True  # off-shard rows mark a spare slot
        positive = positive[:held]
        score = self.sampling_scores(self.step, self.calls).to(local_labels.device).masked_fill(positive, 2.0)
        # Only a batch that could hold more positives than `keep` needs their count (a host sync).
        count = keep if keep >= min(held, all_labels.numel()) else max(keep, int(positive.sum()))
        classes = score.topk(count).indices.sort().values
        remap = torch.full((held,), -1, dtype=torch.long, device=local_labels.device)
        remap[classes] = torch.arange(classes.numel(), device=local_labels.device)
        return classes, torch.where(local_labels >= 0, remap[local_labels.clamp(min=0)], local_labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        all_labels = labels
        if self.context.enabled:
            parts = [torch.empty_like(labels) for _ in range(self.context.world)]
            dist.all_gather(parts, labels)
            all_labels = torch.cat(parts)
        if self.sharded:
            embeddings, labels = _GatherWithGradient.apply(embeddings), all_labels
        on_shard = (labels >= self.start) & (labels < self.end)
        local_labels = torch.where(on_shard, labels - self.start, torch.full_like(labels, -1))
        classes = None
        if self.sample_rate < 1.0:
            classes, local_labels = self.sample(local_labels, all_labels)
        if self.training:
            self.calls += 1
        logits = self.head(embeddings, local_labels, classes, self.split)
        if not self.sharded:
            logits = at_least_fp32(logits)
            loss = F.cross_entropy(logits, local_labels)
            return loss, (logits.argmax(dim=1) == local_labels).float().mean()
        return _ShardedCrossEntropy.apply(logits, local_labels)

    def full_state(self) -> dict | None:
        """The head's state with the class rows of every rank, in class order, on rank 0 (None on the
        others; every rank calls it)."""
        state = {name: self.gather_rows(value) for name, value in self.head.state_dict().items()}
        return state if self.context.rank == 0 else None

    def gather_rows(self, value: torch.Tensor) -> torch.Tensor | None:
        """A per-class tensor (first dim = this rank's classes) with every rank's rows, in class order,
        in rank 0's host memory (None on the other ranks); other tensors as they are, on the host.
        The ranks send their rows to rank 0 one after the other, so that no rank ever holds the
        whole tensor on its device, and rank 0 holds it once, on the host (every rank calls it)."""
        if not (self.sharded and value.dim() >= 1 and value.shape[0] == self.end - self.start):
            return value.detach().cpu()
        world = self.context.world
        if self.context.rank != 0:
            dist.send(value.detach().contiguous(), dst=0)
            return None
        whole = torch.empty((self.num_classes, *value.shape[1:]), dtype=value.dtype)
        for rank in range(world):
            start, end = shard_range(self.num_classes, rank, world)
            if rank == 0:
                whole[start:end] = value.detach().cpu()
                continue
            rows = value.new_empty((end - start, *value.shape[1:]))
            dist.recv(rows, src=rank)
            whole[start:end] = rows.cpu()
        return whole

    def local_rows(self, value: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a full per-class tensor (the inverse of gather_rows)."""
        if self.sharded and value.dim() >= 1 and value.shape[0] == self.num_classes:
            return value[self.start:self.end]
        return value

    def load_full_state(self, state: dict) -> None:
        self.head.load_state_dict({name: self.local_rows(value) for name, value in state.items()})
