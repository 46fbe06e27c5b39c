"""One optimizer step: the hot loop of train.py, also timed by tools/bench/benchmark.py.

Inputs are normalised on the device and laid out channels_last if asked; the forward runs under the
run's autocast (runtime.autocast_context; the margin math itself runs in fp32 inside the heads), fp16
goes through a GradScaler. The backbone (and the head when it is replicated) run under DDP across
processes; micro-batches of a gradient-accumulation step skip DDP's all-reduce except the last.
With `frozen_backbone` the backbone runs in eval mode without gradients and only the head learns.
"""

import contextlib
import time
from dataclasses import dataclass

import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook
from torch.nn.parallel import DistributedDataParallel

from dataset import normalize_images
from margin.base import at_least_fp32
from runtime import autocast_context, resolve_precision

from .distributed import all_reduce_mean


CLIP_SCOPES = ("all", "backbone")


@dataclass
class StepResult:
    """What a step did, as 0-d tensors on the device: reading them (`.item()`) waits for the step, so
    the loop reads them at its log points only."""
    loss: torch.Tensor  # mean cross-entropy over the global batch
    accuracy: torch.Tensor  # fraction of the global batch whose arg-max class is its label
    grad_norm: torch.Tensor  # L2 norm of all gradients (backbone and every shard of the head), before clipping
    skipped: torch.Tensor  # bool: a non-finite loss or gradient; no weight, optimizer state or statistic changed
    overflowed: torch.Tensor  # bool: of those, an fp16 overflow of a finite loss (the GradScaler lowers its scale)


class TrainStep:
    def __init__(self, cfg, context, state):
        self.cfg, self.context = cfg, context
        self.precision = resolve_precision(cfg.precision, context.device)
        backbone, classifier, aux_loss = state.backbone, state.classifier, state.aux_loss
        self.backbone, self.classifier, self.optimizers, self.scaler = backbone, classifier, state.optimizers, state.scaler
        def wrap(module, unused=False):
            if not context.enabled:
                return module
            return DistributedDataParallel(module, device_ids=[context.device.index] if context.device.type == "cuda"
                                           else None, find_unused_parameters=unused)
        unused = getattr(backbone, "unused_in_training", lambda: set())()
        self.train_backbone = wrap(torch.compile(backbone) if cfg.compile else backbone, bool(unused))
        if cfg.ddp_fp16_compress and isinstance(self.train_backbone, DistributedDataParallel):
            # arcface_torch's: the backbone's gradients travel as fp16 (halves the all-reduce traffic)
            self.train_backbone.register_comm_hook(None, fp16_compress_hook)
        self.train_classifier = classifier if cfg.sharded_head else wrap(classifier)
        self.train_aux = wrap(aux_loss) if aux_loss is not None else None
        self.ddp_modules = [m for m in (self.train_backbone, self.train_classifier, self.train_aux)
                            if isinstance(m, DistributedDataParallel)]
        # Running statistics (BatchNorm, AdaFace's norm EMA, CurricularFace's t) change in the forward
        # pass: a skipped step puts them back, so that it changes no state at all.
        self.statistics = [b for m in (backbone, classifier, aux_loss) if m is not None for b in m.buffers()]
        self.input_dtype = next(backbone.parameters()).dtype  # fp32; fp64 where a test converts the state

    def set_lr(self, lr: float) -> None:
        """The schedule drives the head at `lr` and the backbone at lr x backbone_lr_scale; auxiliary
        centres keep their own lr."""
        for name, scale in (("backbone", self.cfg.backbone_lr_scale), ("head", 1.0)):
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr * scale

    def _gradient_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm of the backbone's gradients, norm of all gradients: backbone and every shard of the head)."""
        squares = []
        for module, sharded in ((self.backbone, False), (self.classifier, self.classifier.sharded)):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            square = torch.nn.utils.get_total_norm(grads) ** 2 if grads else torch.zeros((), device=self.context.device)
            if sharded:  # each rank holds other rows of the head
                torch.distributed.all_reduce(square)
            squares.append(square)
        return squares[0].sqrt(), torch.stack(squares).sum().sqrt()

    def _clip(self, backbone_norm: torch.Tensor, total_norm: torch.Tensor, skipped: torch.Tensor) -> None:
        """Scale the gradients down to clip_grad_norm: the backbone's alone, by their own norm
        (arcface_torch's clip_grad_norm_(backbone.parameters(), 5)), or all of them by the total norm.
        A skipped step's norm is not finite: its gradients are left alone (they are not used)."""
        if self.cfg.clip_grad_scope == "backbone":
            parameters, norm = list(self.backbone.parameters()), backbone_norm
        else:
            parameters, norm = [p for m in (self.backbone, self.classifier) for p in m.parameters()], total_norm
        torch.nn.utils.clip_grads_with_norm_(parameters, self.cfg.clip_grad_norm,
                                             torch.where(skipped, torch.zeros_like(norm), norm))

    def _embed(self, images: torch.Tensor, frozen: bool) -> torch.Tensor:
        if not frozen:
            return at_least_fp32(self.train_backbone(images))
        with torch.no_grad():
            return at_least_fp32(self.backbone(images))

    def __call__(self, micro_batches, frozen_backbone: bool = False) -> StepResult:
        cfg, device = self.cfg, self.context.device
        self.backbone.train(not frozen_backbone)
        statistics_before = [b.clone() for b in self.statistics]
        step_loss = torch.zeros((), device=device, dtype=self.input_dtype)
        step_accuracy = torch.zeros((), device=device)
        for micro in range(cfg.grad_accum):
            images, labels, *_ = next(micro_batches)  # a loader of TrainingView also yields bad-record reports
            images = normalize_images(images.to(device, non_blocking=True), self.input_dtype)
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
                # grad_accum_sum: arcface_torch backpropagates each micro-batch's loss as it is (a summed gradient)
                self.scaler.scale(total if cfg.grad_accum_sum else total / cfg.grad_accum).backward()
            step_loss += loss.detach() / cfg.grad_accum
            step_accuracy += accuracy.detach() / cfg.grad_accum
        step_loss = all_reduce_mean(step_loss, self.context)
        step_accuracy = all_reduce_mean(step_accuracy, self.context)

        stepped = [optimizer for name, optimizer in self.optimizers.items()
                   if not (frozen_backbone and name == "backbone")]
        for optimizer in stepped:
            self.scaler.unscale_(optimizer)
        backbone_norm, grad_norm = self._gradient_norms()
        # One verdict for the whole step, decided on the device (no wait for the host): a non-finite
        # loss or gradient anywhere skips every optimizer, and puts the statistics back.
        loss_finite = torch.isfinite(step_loss)
        skipped = ~(loss_finite & torch.isfinite(grad_norm))
        if cfg.clip_grad_norm > 0:
            self._clip(backbone_norm, grad_norm, skipped)
        for optimizer in stepped:
            optimizer.found_inf = skipped.float()  # fused SGD / AdamW leave everything as it was where it is 1
            optimizer.step()
            del optimizer.found_inf
        with torch.no_grad():
            for buffer, before in zip(self.statistics, statistics_before):
                buffer.copy_(torch.where(skipped, before, buffer))
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # fp16: lowers the scale after an overflow, as its unscale_ recorded it
        overflowed = skipped & loss_finite if self.precision == "fp16" else torch.zeros_like(skipped)
        return StepResult(step_loss, step_accuracy, grad_norm, skipped, overflowed)


class StepWindow:
    """The steps since the last log point. Their results stay on the device until `read()` fetches them
    all at once: the training loop's one wait for the device between its log points."""

    def __init__(self):
        self.steps, self.results, self.seconds = [], [], 0.0  # seconds: in the steps, and in the wait

    def add(self, step: int, result: StepResult, seconds: float) -> None:
        self.steps.append(step)
        self.results.append(result)
        self.seconds += seconds

    def read(self) -> list[dict]:
        """{step, loss, accuracy, grad_norm, skipped, overflowed} of every step, in order."""
        if not self.results:
            return []
        started = time.time()
        rows = torch.stack([torch.stack([r.loss.double(), r.accuracy.double(), r.grad_norm.double(),
                                         r.skipped.double(), r.overflowed.double()]) for r in self.results]).tolist()
        self.seconds += time.time() - started
        return [{"step": step, "loss": loss, "accuracy": accuracy, "grad_norm": norm, "skipped": bool(skipped),
                 "overflowed": bool(overflowed)}
                for step, (loss, accuracy, norm, skipped, overflowed) in zip(self.steps, rows)]

