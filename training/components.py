"""Building what a run trains from its Config: backbone, classifier (replicated or sharded head),
auxiliary loss, optimizers and GradScaler. Used by train.py and tools/benchmark.py alike."""

import inspect

import torch

from backbone import build_backbone
from runtime import PRECISIONS
from margin import MARGINS, build_aux_loss, build_margin

from .distributed import DistributedContext, ShardedClassifier

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(module: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW over `module`'s trainable parameters; with decay_bn_and_bias=False, 1-d
    parameters (BatchNorm, PReLU, biases) are not decayed. The fused implementations update all
    parameters in a few kernels on CUDA instead of several per tensor; on the CPU they measured as
    fast as the default ones."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if cfg.decay_bn_and_bias or p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if not cfg.decay_bn_and_bias and p.dim() <= 1], "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    raise ValueError(f"optimizer={cfg.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")


def head_hyperparameters(cfg) -> dict:
    """s and m for the heads that take them (softmax takes neither), then head_options."""
    if cfg.head not in MARGINS:
        raise ValueError(f"unknown head {cfg.head!r}; valid: {', '.join(sorted(MARGINS))}")
    accepted = inspect.signature(MARGINS[cfg.head]).parameters
    hyper = {key: getattr(cfg, key) for key in ("s", "m") if key in accepted}
    if "m" in hyper and accepted["m"].annotation in (int, "int") and float(hyper["m"]).is_integer():
        hyper["m"] = int(hyper["m"])  # SphereFace's multiplicative margin is an integer
    return {**hyper, **cfg.head_options}


def build_model(cfg, context: DistributedContext, num_classes: int):
    """(backbone, classifier, aux_loss or None) on the context's device."""
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision={cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
    options = {"dropout": cfg.dropout} if cfg.dropout else {}
    backbone = build_backbone(cfg.backbone, cfg.embedding_size, **options)
    if cfg.sync_bn and context.enabled:
        backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    layout = torch.channels_last if cfg.channels_last else torch.preserve_format
    backbone = backbone.to(context.device, memory_format=layout)
    hyper = head_hyperparameters(cfg)
    head_context = context if cfg.sharded_head else DistributedContext(device=context.device)
    classifier = ShardedClassifier(lambda classes: build_margin(cfg.head, cfg.embedding_size, classes, **hyper),
                                   num_classes, head_context, cfg.sample_rate, cfg.seed).to(context.device)
    aux_loss = None
    if cfg.aux_loss:
        aux_loss = build_aux_loss(cfg.aux_loss, num_classes, cfg.embedding_size).to(context.device)
    return backbone, classifier, aux_loss


def build_optimizers(cfg, backbone, classifier, aux_loss) -> tuple[dict, torch.amp.GradScaler]:
    optimizers = {"backbone": build_optimizer(backbone, cfg), "head": build_optimizer(classifier, cfg)}
    if aux_loss is not None:
        optimizers["aux"] = torch.optim.SGD(aux_loss.parameters(), lr=cfg.aux_lr)
    device_type = next(backbone.parameters()).device.type
    return optimizers, torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")
