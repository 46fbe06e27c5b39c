"""The learning rate of every optimizer step, as the references define it.

    multistep: lr * gamma ** (milestones passed), milestones in epochs. By default the lr drops after
               `m` whole epochs; with multistep_epoch_start the old repository's MultiStepLR, which
               its train.py steps at the *start* of each 1-based epoch, so its lr drops after m - 1.
    cosine:    lr * 0.5 * (1 + cos(pi * progress)), progress from 0 after warm-up to 1 at the end.
    poly:      arcface_torch's PolynomialLRWarmup (lr_scheduler.py), exactly as train_v2.py steps it:
               once per micro-batch, so optimizer step k runs at the scheduler's iteration
               (k + 1) * grad_accum - 1; iteration 0 at the full lr (its initial step returns the base
               lr), iteration i <= warmup at lr * i / warmup, then each iteration multiplies the
               previous lr by ((1 - (i - w)/(t - w)) / (1 - (i - 1 - w)/(t - w))) ** power, and past
               t it stays. Warm-up and total are in iterations: the micro-batches of an epoch
               (images // (micro-batch x processes), its num_image // total_batch_size) times the epochs.
multistep and cosine warm up linearly, lr * (step + 1) / warmup_steps, over `warmup_epochs`.
"""

import bisect
import math

from runtime.errors import UnknownName

SCHEDULES = ("multistep", "cosine", "poly")


class PolynomialLRWarmup:
    """arcface_torch's PolynomialLRWarmup as a function of the iteration, with its rounding: the decay
    is a running product (its chained form), kept here and extended as iterations are asked for."""

    def __init__(self, base_lr: float, warmup_iters: float, total_iters: float, power: float = 1.0):
        self.base_lr, self.warmup, self.total, self.power = base_lr, warmup_iters, total_iters, power
        self._chain = []  # lr of iterations first_decay, first_decay + 1, ...

    def __call__(self, iteration: int) -> float:
        if iteration > self.total:  # past its total the lr stays where it was
            iteration = math.floor(self.total)
        if iteration == 0:
            return self.base_lr
        if iteration <= self.warmup:
            return self.base_lr * iteration / self.warmup
        first = math.floor(self.warmup) + 1  # the first iteration of the decay
        w, t = self.warmup, self.total
        while len(self._chain) <= iteration - first:
            i = first + len(self._chain)
            previous = self._chain[-1] if self._chain else self(i - 1)
            self._chain.append(previous * ((1.0 - (i - w) / (t - w)) / (1.0 - (i - 1 - w) / (t - w))) ** self.power)
        return self._chain[iteration - first]


class LearningRate:
    """`lr(step)`: the learning rate of optimizer step `step` (0-based) of a run.

    `images` is the training set's size: arcface_torch counts an epoch's scheduler iterations from it."""

    def __init__(self, cfg, steps_per_epoch: int, total_steps: int, images: int):
        self.cfg, self.steps_per_epoch, self.total_steps = cfg, steps_per_epoch, total_steps
        self.warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
        shift = 1 if cfg.multistep_epoch_start else 0
        self.boundaries = [(m - shift) * steps_per_epoch for m in cfg.milestones]
        if cfg.schedule == "poly":
            iterations_per_epoch = images // (cfg.batch_size // cfg.grad_accum)
            capped = total_steps < steps_per_epoch * cfg.epochs  # max_steps: the schedule spans the run
            total = total_steps * cfg.grad_accum if capped else iterations_per_epoch * cfg.epochs
            self.poly = PolynomialLRWarmup(cfg.lr, iterations_per_epoch * cfg.warmup_epochs, total, cfg.poly_power)

    def __call__(self, step: int) -> float:
        cfg = self.cfg
        if cfg.schedule == "poly":
            return self.poly((step + 1) * cfg.grad_accum - 1)
        if step < self.warmup_steps:
            return cfg.lr * ((step + 1) / self.warmup_steps)
        if cfg.schedule == "multistep":
            return cfg.lr * cfg.lr_gamma ** bisect.bisect_right(self.boundaries, step)
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return cfg.lr * (0.5 * (1.0 + math.cos(math.pi * progress)))
        raise UnknownName("schedule", cfg.schedule, SCHEDULES)
