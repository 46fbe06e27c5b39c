"""Building what a run trains from its Config: backbone, classifier (replicated or sharded head),
auxiliary loss, optimizers and GradScaler. Used by train.py and tools/bench/benchmark.py alike."""

import os
import time

import torch
import torch.distributed as dist

from backbone import build_backbone
from backbone.cpu_choice import layer_choice_lines, measured_precision
from runtime import UnknownName, UsageError, measured, resolve_precision
from runtime.artifacts import ArtifactError, check_fit, read_backbone_weights
from margin import MARGINS, build_aux_loss, build_margin

from .distributed import DistributedContext, ShardedClassifier
from .state import TrainState

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(module: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW over `module`'s trainable parameters; with decay_bn_and_bias=False, 1-d
    parameters (BatchNorm, PReLU, biases) are not decayed. The fused implementations update all
    parameters in a few kernels on CUDA instead of several per tensor, and are no slower on the CPU."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if cfg.decay_bn_and_bias or p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if not cfg.decay_bn_and_bias and p.dim() <= 1], "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=True)
        if cfg.momentum > 0:
            # Zero buffers make the first step buf = 0.9 x 0 + grad = grad, torch's own first step, exactly.
            # Without them, a skipped first step (found_inf) leaves the fused SGD's new buffers uninitialised.
            for parameter in trainable:
                optimizer.state[parameter]["momentum_buffer"] = torch.zeros_like(parameter)
        return optimizer
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    raise UnknownName("optimizer", cfg.optimizer, OPTIMIZERS)


def head_hyperparameters(cfg) -> dict:
    """The config's s and m for the heads that declare them (softmax takes neither), its margin_gradient
    for those that declare `gradient` and its inter-class filtering threshold where set, then head_options."""
    declared = MARGINS[cfg.head].HYPERPARAMETERS
    hyper = {key: getattr(cfg, key) for key in ("s", "m") if key in declared}
    if "gradient" in declared:
        hyper["gradient"] = cfg.margin_gradient
    if cfg.interclass_filtering_threshold:
        hyper["interclass_filtering_threshold"] = cfg.interclass_filtering_threshold
    return {**hyper, **cfg.head_options}


def cpu_training_precision(cfg, context) -> tuple[str, list[str]]:
    """(precision, log lines) of `auto` on the CPU: what this network's pass at this run's micro-batch
    ran fastest in here (backbone.cpu_choice: measured at first use, then cached), with the layer paths
    and the times that chose them. Rank 0 decides; every rank takes its choice."""
    record = None
    if context.rank == 0:
        micro_batch = max(1, cfg.batch_size // (context.world * cfg.grad_accum))
        record = measured_precision(cfg.backbone, cfg.embedding_size, micro_batch, backbone_build_options(cfg))
    if context.enabled:
        shared = [record]
        dist.broadcast_object_list(shared, src=0)
        record = shared[0]
    lines = [measured.describe(record["family"], record)] + (layer_choice_lines() if context.rank == 0 else [])
    return record["choice"], lines


def backbone_build_options(cfg) -> dict:
    """The keyword options the config's backbone is built with: backbone_options, dropout, grad_checkpoint."""
    options = dict(cfg.backbone_options)
    if cfg.dropout:
        options["dropout"] = cfg.dropout
    if cfg.grad_checkpoint:
        options["grad_checkpoint"] = True
    return options


def build_backbone_for(cfg) -> torch.nn.Module:
    """The config's backbone, with the options it sets (on the CPU, not yet laid out)."""
    return build_backbone(cfg.backbone, cfg.embedding_size, **backbone_build_options(cfg))


def read_initial_backbone(cfg) -> tuple[dict, str]:
    """(state_dict, description of its origin) of `init_backbone`: a backbone.pt, a train.py
    checkpoint.pt or a (converted) state_dict, checked to fit the config's backbone exactly (on the
    meta device: no memory, no time) before anything is built."""
    path = cfg.init_backbone
    try:
        state_dict, stored_name, stored_size = read_backbone_weights(path)
        for key, stored, wanted in (("backbone", stored_name, cfg.backbone), ("embedding_size", stored_size,
                                                                              cfg.embedding_size)):
            if stored is not None and stored != wanted:
                raise ArtifactError(path, f"holds {key} {stored!r}, but the config says {wanted!r}")
        with torch.device("meta"):
            skeleton = build_backbone_for(cfg)
        check_fit(state_dict, skeleton, path, f"backbone {cfg.backbone} with embedding size {cfg.embedding_size}")
    except ArtifactError as error:
        raise UsageError(f"init_backbone: {error}") from None
    stat = os.stat(path)
    return state_dict, f"{os.path.abspath(path)} ({stat.st_size} bytes, modified " \
                       f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stat.st_mtime))})"


def build_model(cfg, context: DistributedContext, num_classes: int):
    """(backbone, classifier, aux_loss or None) on the context's device."""
    backbone = build_backbone_for(cfg)
    if cfg.sync_bn and context.enabled:
        backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    layout = torch.channels_last if cfg.channels_last else torch.preserve_format
    backbone = backbone.to(context.device, memory_format=layout)
    hyper = head_hyperparameters(cfg)
    classifier = ShardedClassifier(lambda classes: build_margin(cfg.head, cfg.embedding_size, classes, **hyper),
                                   num_classes, context, cfg.sharded_head, cfg.sample_rate, cfg.seed,
                                   cfg.head_init).to(context.device)
    aux_loss = None
    if cfg.aux_loss:
        aux_loss = build_aux_loss(cfg.aux_loss, num_classes, cfg.embedding_size).to(context.device)
    return backbone, classifier, aux_loss


def build_optimizers(cfg, backbone, classifier, aux_loss) -> tuple[dict, torch.amp.GradScaler]:
    optimizers = {"backbone": build_optimizer(backbone, cfg), "head": build_optimizer(classifier, cfg)}
    if aux_loss is not None:
        optimizers["aux"] = torch.optim.SGD(aux_loss.parameters(), lr=cfg.aux_lr, fused=True)
    device = next(backbone.parameters()).device
    scaler = torch.amp.GradScaler(device.type, growth_interval=cfg.grad_scaler_growth_interval,
                                  enabled=resolve_precision(cfg.precision, device) == "fp16")
    return optimizers, scaler


def build_train_state(cfg, context: DistributedContext, num_classes: int) -> TrainState:
    """A fresh TrainState for the config: modules on the context's device, their optimizers, the scaler."""
    backbone, classifier, aux_loss = build_model(cfg, context, num_classes)
    optimizers, scaler = build_optimizers(cfg, backbone, classifier, aux_loss)
    return TrainState(backbone, classifier, aux_loss, optimizers, scaler)
