"""One optimizer step: the hot loop of train.py, also timed by tools/benchmark.py.

Inputs are normalised on the device and laid out channels_last if asked; the forward runs under the
run's autocast (runtime.autocast_context; the margin math itself runs in fp32 inside the heads), fp16
goes through a GradScaler. The backbone (and the head when it is replicated) run under DDP across
processes; micro-batches of a gradient-accumulation step skip DDP's all-reduce except the last.
With `frozen_backbone` the backbone runs in eval mode without gradients and only the head learns.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel

from dataset import normalize_images
from runtime import autocast_context, resolve_precision

from .distributed import all_reduce_mean


@dataclass
class StepResult:
    loss: float  # mean cross-entropy over the global batch
    accuracy: float  # fraction of the global batch whose arg-max class is its label
    grad_norm: float  # L2 norm of all gradients (backbone and every shard of the head), before clipping
    finite: bool  # False: the step was skipped (non-finite loss or gradients); nothing was updated


class TrainStep:
    def __init__(self, cfg, context, state):
        self.cfg, self.context = cfg, context
        self.precision = resolve_precision(cfg.precision, context.device)
        backbone, classifier, aux_loss = state.backbone, state.classifier, state.aux_loss
        self.backbone, self.classifier, self.optimizers, self.scaler = backbone, classifier, state.optimizers, state.scaler
        wrap = (lambda m: DistributedDataParallel(m, device_ids=[context.device.index]
                                                  if context.device.type == "cuda" else None)) \
            if context.enabled else (lambda m: m)
        self.train_backbone = wrap(torch.compile(backbone) if cfg.compile else backbone)
        self.train_classifier = classifier if cfg.sharded_head else wrap(classifier)
        self.train_aux = wrap(aux_loss) if aux_loss is not None else None
        self.ddp_modules = [m for m in (self.train_backbone, self.train_classifier, self.train_aux)
                            if isinstance(m, DistributedDataParallel)]
        self.clipped = [p for m in (backbone, classifier) for p in m.parameters()]
        # Running statistics (BatchNorm, AdaFace's norm EMA, CurricularFace's t) change in the forward
        # pass: a skipped step puts them back, so that it changes no state at all.
        self.statistics = [b for m in (backbone, classifier, aux_loss) if m is not None for b in m.buffers()]

    def set_lr(self, lr: float) -> None:
        """The schedule drives the head at `lr` and the backbone at lr x backbone_lr_scale; auxiliary
        centres keep their own lr."""
        for name, scale in (("backbone", self.cfg.backbone_lr_scale), ("head", 1.0)):
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr * scale

    def _grad_norm(self) -> torch.Tensor:
        squares = []
        for module, sharded in ((self.backbone, False), (self.classifier, self.cfg.sharded_head)):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            square = torch.nn.utils.get_total_norm(grads) ** 2 if grads else torch.zeros((), device=self.context.device)
            if sharded and self.context.enabled:  # each rank holds other rows of the head
                torch.distributed.all_reduce(square)
            squares.append(square)
        return torch.stack(squares).sum().sqrt()

    def _embed(self, images: torch.Tensor, frozen: bool) -> torch.Tensor:
        if not frozen:
            return self.train_backbone(images).float()
        with torch.no_grad():
            return self.backbone(images).float()

    def __call__(self, micro_batches, frozen_backbone: bool = False) -> StepResult:
        cfg, device = self.cfg, self.context.device
        self.backbone.train(not frozen_backbone)
        statistics_before = [b.clone() for b in self.statistics]
        step_loss = torch.zeros((), device=device)
        step_accuracy = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            images, labels, *_ = next(micro_batches)  # a loader of TrainingView also yields bad-record reports
            images = normalize_images(images.to(device, non_blocking=True))
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with contextlib.ExitStack() as stack:
                if micro < cfg.grad_accum - 1:
                    for module in self.ddp_modules:
                        stack.enter_context(module.no_sync())
                with autocast_context(device, self.precision):
                    embeddings = self._embed(images, frozen_backbone)
                    loss, accuracy = self.train_classifier(embeddings, labels)
                    total = loss + self.classifier.head.regularizer(embeddings)
                    if self.train_aux is not None:
                        total = total + cfg.aux_weight * self.train_aux(embeddings, labels)
                self.scaler.scale(total / cfg.grad_accum).backward()
            step_loss += loss.detach() / cfg.grad_accum
            step_accuracy += accuracy.detach() / cfg.grad_accum
        step_loss = all_reduce_mean(step_loss, self.context)
        step_accuracy = all_reduce_mean(step_accuracy, self.context)

        stepped = {name: optimizer for name, optimizer in self.optimizers.items()
                   if not (frozen_backbone and name == "backbone")}
        for optimizer in stepped.values():
            self.scaler.unscale_(optimizer)
        grad_norm = self._grad_norm()
        loss_value, norm_value = step_loss.item(), grad_norm.item()
        # fp16 overflows are the GradScaler's business (it skips the step and lowers its scale).
        finite = math.isfinite(loss_value) and (self.precision == "fp16" or math.isfinite(norm_value))
        if finite:
            if cfg.clip_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(self.clipped, cfg.clip_grad_norm, grad_norm)
            for optimizer in stepped.values():
                self.scaler.step(optimizer)
        else:
            for buffer, before in zip(self.statistics, statistics_before):
                buffer.copy_(before)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()
        return StepResult(loss_value, step_accuracy.item(), norm_value, finite)
