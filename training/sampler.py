"""Which samples each process trains on, step by step: deterministic, resumable, rank-aware.

Every epoch is a permutation drawn from (seed, epoch). Optimizer step k of an epoch uses the global
batch perm[k*B : (k+1)*B]; rank r takes the r-th of `world` equal slices of it, and splits its slice
into `grad_accum` micro-batches. So one process with grad_accum=W sees exactly the micro-batches that
W processes see together, and a run resumed at (epoch, step) continues with the very same batches.
Keys are (epoch, index) pairs, so that per-sample augmentation can depend on the epoch too.
"""

import torch


class StepBatchSampler(torch.utils.data.Sampler):
    def __init__(self, dataset_size: int, global_batch: int, world: int = 1, rank: int = 0,
                 grad_accum: int = 1, seed: int = 0):
        if global_batch % (world * grad_accum):
            raise ValueError(f"batch_size={global_batch} must divide by world size x grad_accum "
                             f"= {world} x {grad_accum}")
        if dataset_size < global_batch:
            raise ValueError(f"the training set has {dataset_size} images, fewer than one batch of {global_batch}")
        self.dataset_size = dataset_size
        self.global_batch = global_batch
        self.rank_batch = global_batch // world
        self.micro_batch = self.rank_batch // grad_accum
        self.rank = rank
        self.grad_accum = grad_accum
        self.seed = seed
        self.steps_per_epoch = dataset_size // global_batch  # the last partial batch is dropped
        self.epoch = 0
        self.start_step = 0

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from optimizer step `start_step` on (for resuming mid-epoch)."""
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.grad_accum

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * self.rank_batch
            for micro in range(self.grad_accum):
                start = first + micro * self.micro_batch
                yield [(self.epoch, index) for index in order[start:start + self.micro_batch]]
