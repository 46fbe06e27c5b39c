"""Every hyperparameter of a training run, with its default and why, and its validation.

Defaults are the old repository's CASIA-WebFace hyperparameters (MobileFaceNet + ArcFace s=32 m=0.5,
SGD 0.1 Nesterov, weight decay 5e-4, x0.1 at epochs 6/11/16, 18 epochs, batch 200); the recipes in
configs/seed/ and configs/arcface_torch/ reproduce the references' training step for step (docs/recipes.md).
A run is configured by an override file in configs/ that sets only what differs, then `--key=value` flags:

    python train.py configs/seed/casia_ir50_arcface.py --lr=0.05 --batch_size=256

`load_config(argv)` resolves and validates that (what train.py calls and the tests import): a bad
key, type, name or range is a ConfigError naming the flag or the override file's line, the value
and what is valid, before anything is built.
"""

import ast
import dataclasses
import json
import math
import os
import runpy
import sys
import typing
from dataclasses import dataclass, field

import torch

from backbone import BACKBONES, backbone_options
from evaluation.verification import PROTOCOLS
from margin import AUX_LOSSES, MARGINS, build_margin
from margin.angular import MARGIN_GRADIENTS
from margin.base import HEAD_INITS
from runtime import DEVICES, PRECISION_CHOICES, UnknownName, UsageError, check_precision, resolve_device
from training.components import OPTIMIZERS, build_backbone_for, head_hyperparameters
from training.schedule import SCHEDULES
from training.step import CLIP_SCOPES


class ConfigError(UsageError):
    """A config key or value that cannot run, with where it came from and what is valid."""


@dataclass
class Config:
    # ============ run ============
    name: str = "casia_mobilefacenet_arcface"  # run folder = output_dir/name; also the Visdom environment
    output_dir: str = "runs"
    seed: int = 0  # seeds weights, shuffling and augmentation; with it a CPU run is exactly reproducible
    device: str = "auto"  # auto (cuda when present, else cpu) | cuda | cpu

    # ============ data ============
    # A .rec/.idx pack (its folder or prefix), an image folder (one sub-folder per identity), or a
    # `path label` list file (paths relative to train_root, default the list's folder).
    train_data: str = "data/faces_webface_112x112"
    train_root: str = ""
    num_classes: int = 0  # 0: from the pack's `property` file or the largest label + 1
    # Verification sets: NAME resolves to val_dir/NAME.bin (val_dir defaults to train_data's folder).
    val_sets: list[str] = field(default_factory=lambda: ["lfw", "agedb_30", "cfp_fp"])
    val_dir: str = ""
    val_protocol: str = "insightface"  # insightface | seed (see evaluation/verification.py)
    val_batch_size: int = 256
    workers: int = 4  # DataLoader processes per training process (tools/bench/benchmark_loader.py measures one)
    flip: bool = True  # random horizontal mirroring, the standard face augmentation
    skip_corrupt: bool = False  # replace unreadable records by the next one (each reported once, counted) instead of stopping

    # ============ model ============
    backbone: str = "mobilefacenet"  # any name in backbone.BACKBONES
    embedding_size: int = 128  # the old repository's MobileFaceNet width; IR nets use 512
    dropout: float = 0.0  # before the embedding FC of the IR/ResNet nets; insightface trains with 0
    grad_checkpoint: bool = False  # recompute activations in backward (IR nets, ViTs): less memory, slower steps
    backbone_options: dict = field(default_factory=dict)  # further constructor options, e.g. {"mask_ratio": 0.05} (ViT)
    # Fine-tuning: start the backbone from a file (a run's backbone.pt or checkpoint.pt, a converted
    # published model); the head starts fresh. resume (below) instead continues the same run.
    init_backbone: str = ""
    freeze_backbone_steps: int = 0  # train only the head for this many first steps (backbone in eval mode)
    backbone_lr_scale: float = 1.0  # the backbone's lr = lr x this (the head's is lr): < 1 when fine-tuning
    head: str = "arcface"  # any name in margin.MARGINS
    s: float = 32.0  # logit scale; 32 as the old recipe (64 is the ArcFace paper's for large sets)
    m: float = 0.5  # angular margin (arcface), additive (cosface, 0.35), or multiplicative (sphereface, 4)
    head_options: dict = field(default_factory=dict)  # further head hyperparameters, e.g. {"easy_margin": true}
    # exact: differentiate the margined target, as the papers' formulas and the old repository do;
    # straight_through: arcface_torch's gradient (margin applied without gradient, d logit/d cos = s):
    # every ArcFace model arcface_torch published was trained with it (arcface and combined heads).
    margin_gradient: str = "exact"
    head_init: str = "default"  # default | normal (N(0, 0.01), arcface_torch's) | xavier_uniform (the old repository's)
    # arcface_torch's inter-class filtering: non-target cosines above this count as 0 (likely the same
    # identity under another label: noisy data); 0.4 in its WebFace12M-with-flipped-labels recipe; 0 = off.
    interclass_filtering_threshold: float = 0.0
    sharded_head: bool = False  # split the class centres over ranks (Partial FC): for 100k+ identities
    sample_rate: float = 1.0  # Partial FC negative-class sampling; 1.0 = every class in every step
    aux_loss: str = ""  # "" | center | agent_center, added to the head's loss
    aux_weight: float = 0.01  # lambda of the auxiliary loss (Wen et al. use 0.003-0.01)
    aux_lr: float = 0.5  # SGD learning rate of the auxiliary centres (their own optimizer, as in the paper)
    sync_bn: bool = False  # SyncBatchNorm across ranks: BN statistics of the global batch

    # ============ optimisation ============
    epochs: int = 18
    batch_size: int = 200  # GLOBAL batch (all processes, one optimizer step); each rank gets batch_size/world
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size must divide by world*grad_accum
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # for the global batch above; scale linearly if you change it a lot
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_bn_and_bias: bool = True  # False: no weight decay on BatchNorm/PReLU weights and biases
    schedule: str = "multistep"  # multistep | cosine | poly
    milestones: list[float] = field(default_factory=lambda: [6, 11, 16])  # epochs where lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0  # linear warm-up from 0; insightface warms up 0-2 epochs for large sets
    # The old repository steps its MultiStepLR at the start of each 1-based epoch: its lr drops after
    # m - 1 epochs for a milestone m. False: after m epochs.
    multistep_epoch_start: bool = False
    poly_power: float = 1.0  # arcface_torch's PolynomialLRWarmup default: a linear decay
    clip_grad_norm: float = 0.0  # 0 = off; arcface_torch clips at 5
    clip_grad_scope: str = "all"  # all (backbone and head, by their joint norm) | backbone (arcface_torch's)
    # arcface_torch's train_v2 backpropagates each micro-batch's loss unscaled: the step's gradient is
    # the sum over micro-batches (and its clipping sees that sum). False: the mean (the global batch's loss).
    grad_accum_sum: bool = False
    precision: str = "auto"  # auto | bf16 | fp16 (GradScaler) | fp32; autocast on CUDA and the CPU. auto: on a GPU
    #                          bf16 where it has fast bf16 kernels, else fp16; on a CPU the faster of fp32 and bf16
    #                          for this network and batch, measured at first use and cached (backbone/cpu_choice.py)
    channels_last: bool = True  # NHWC convolutions: faster on tensor cores and on the CPU
    compile: bool = False  # torch.compile the backbone (minutes of compile time, then faster steps)
    grad_scaler_growth_interval: int = 2000  # fp16: steps without overflow before the scale doubles (arcface_torch: 100)
    ddp_fp16_compress: bool = False  # all-reduce the backbone's gradients in fp16 (arcface_torch's comm hook)
    max_nonfinite_steps: int = 10  # stop after this many consecutive non-finite losses
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs): demos and tests
    max_train_minutes: float = 0.0  # stop (evaluate, checkpoint) once training steps took this long; 0 = off

    # ============ monitoring ============
    log_freq: int = 50  # steps between log lines / metrics records
    test_freq: int = 2000  # steps between verification runs (and at the end); 0 = only at the end
    eval_at_start: bool = False  # also evaluate the untrained network (the demo's "before" number)
    save_freq: int = 2000  # steps between checkpoints (and at the end)
    visdom: bool = True  # live curves; a missing server warns once and training goes on
    visdom_server: str = "http://127.0.0.1"
    visdom_port: int = 8097
    progress: bool = True  # tqdm bar
    resume: str = ""  # a checkpoint to continue from; by default output_dir/name/checkpoint.pt if it exists


# Ranges, by field: (test, what is valid). Choices and cross-field rules are in `validate`.
_POSITIVE = (lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
RANGES = {
    **{key: _POSITIVE for key in ("batch_size", "grad_accum", "epochs", "embedding_size", "val_batch_size",
                                  "log_freq", "max_nonfinite_steps", "lr", "aux_lr", "lr_gamma", "poly_power",
                                  "backbone_lr_scale", "grad_scaler_growth_interval")},
    **{key: _NON_NEGATIVE for key in ("seed", "num_classes", "workers", "test_freq", "save_freq", "max_steps",
                                      "freeze_backbone_steps", "weight_decay", "warmup_epochs", "clip_grad_norm",
                                      "aux_weight", "max_train_minutes")},
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "sample_rate": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "interclass_filtering_threshold": (lambda v: 0 <= v < 1, "a number in [0, 1) (0 = off)"),
    "visdom_port": (lambda v: 0 < v < 65536, "a port number in 1..65535"),
}


class UnknownConfigKey(UnknownName, ConfigError, KeyError):
    """A key that Config does not have, with where it was set."""


class UnknownConfigValue(UnknownName, ConfigError):
    """A name that the registry behind a key (backbone, head, optimizer, ...) does not hold, with where it was set."""


class ConfigTypeError(ConfigError, TypeError):
    pass


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Config)


def _type_name(kind) -> str:
    return getattr(kind, "__name__", str(kind))


def parse_value(key: str, text: str, kind) -> typing.Any:
    """Type-check a command-line value against the field's type."""
    origin = typing.get_origin(kind)
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind in (int, float, str):
            return kind(text)
        if origin is list:
            item_type = typing.get_args(kind)[0]
            items = json.loads(text) if text.strip().startswith("[") else [v for v in text.split(",") if v]
            return [item_type(v) for v in items]
        if kind is dict or origin is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return value
    except (ValueError, TypeError, json.JSONDecodeError) as error:
        raise ConfigError(f"--{key}={text!r}: not a valid {_type_name(kind)} ({error})") from None
    raise TypeError(f"field {key} has unsupported type {kind}")


def _check_value(key: str, value, kind, source: str):
    """Values from override files are Python objects: check (and widen int to float) them."""
    origin = typing.get_origin(kind) or kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, origin) or (kind is int and isinstance(value, bool)):
        raise ConfigTypeError(f"{source}: {key} = {value!r} should be {_type_name(kind)}")
    if origin is list:
        item_type = typing.get_args(kind)[0]
        items = [float(v) if item_type is float and isinstance(v, int) and not isinstance(v, bool) else v
                 for v in value]
        if not all(isinstance(v, item_type) and not (item_type is not bool and isinstance(v, bool)) for v in items):
            raise ConfigTypeError(f"{source}: {key} = {value!r} should be a list of {_type_name(item_type)}")
        return items
    return value


def _assignment_lines(path: str) -> dict[str, int]:
    """Line of the (last) top-level assignment of each name in an override file."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    lines = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            if isinstance(target, ast.Name):
                lines[target.id] = node.lineno
    return lines


def _unknown_key(key: str, source: str, types) -> UnknownConfigKey:
    # lr_rate, epochs_total: the key the user started to write
    suggestion = key.split("_")[0] if key.split("_")[0] in types else None
    return UnknownConfigKey("config key", key, sorted(types), where=source, suggestion=suggestion)


def load_config(argv: list[str] | None = None, world_size: int | None = None) -> Config:
    """[override.py ...] [--key=value ...] -> a validated Config (ConfigError otherwise).

    `world_size` (default: torchrun's WORLD_SIZE, else 1) is what batch_size must divide by."""
    argv = sys.argv[1:] if argv is None else argv
    types = _field_types()
    values: dict[str, typing.Any] = {}
    origins: dict[str, str] = {}

    for arg in argv:
        if arg == "--":  # torchrun needs it before overrides that abbreviate its own flags (--s, --m)
            continue
        if arg.startswith("--"):
            key, has_value, text = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key not in types:
                raise _unknown_key(key, arg, types)
            if not has_value:
                if types[key] is not bool:
                    raise ConfigError(f"{arg}: give a value as --{key}=VALUE")
                text = "true"
            values[key] = parse_value(key, text, types[key])
            origins[key] = arg
        else:
            if not os.path.isfile(arg):
                raise ConfigError(f"{arg}: no such override file (arguments are override files and --key=value)")
            try:
                lines = _assignment_lines(arg)
                namespace = runpy.run_path(arg)
            except Exception as error:  # the file is user code: any error is its own
                raise ConfigError(f"{arg}: cannot be run as an override file ({type(error).__name__}: {error})") from None
            overrides = {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, type(ast))}
            for key, value in overrides.items():
                source = f"{arg}, line {lines[key]}" if key in lines else arg
                if key not in types:
                    raise _unknown_key(key, f"{arg}, line {lines[key]}" if key in lines else arg, types)
                values[key] = _check_value(key, value, types[key], arg)
                origins[key] = source
    config = Config(**values)
    validate(config, origins, world_size)
    return config


def validate(cfg: Config, origins: dict[str, str] | None = None, world_size: int | None = None) -> None:
    """Every field of `cfg` against its type, its range and the tables that define the names it
    holds; raises ConfigError naming the key, where it was set, the value and what is valid."""
    origins = origins or {}
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))

    def where(key: str) -> str:
        return origins.get(key, f"{key}={getattr(cfg, key)!r} (default)")

    def fail(key: str, valid: str, hint: str = ""):
        raise ConfigError(f"{where(key)}: {key}={getattr(cfg, key)!r} is invalid;{hint} valid: {valid}")

    for key, kind in _field_types().items():
        value = getattr(cfg, key)
        origin = typing.get_origin(kind) or kind
        if not isinstance(value, origin) or (origin in (int, float) and isinstance(value, bool)):
            fail(key, f"a {_type_name(kind)}")
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, "a finite number")
        if key in RANGES and not RANGES[key][0](value):
            fail(key, RANGES[key][1])

    choices = {"backbone": BACKBONES, "head": MARGINS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "precision": PRECISION_CHOICES, "device": DEVICES, "val_protocol": PROTOCOLS,
               "margin_gradient": MARGIN_GRADIENTS, "head_init": HEAD_INITS, "clip_grad_scope": CLIP_SCOPES}
    for key, table in choices.items():
        if getattr(cfg, key) not in table:
            raise UnknownConfigValue(key, getattr(cfg, key), sorted(table), where=where(key))
    if cfg.aux_loss and cfg.aux_loss not in AUX_LOSSES:
        raise UnknownConfigValue("aux_loss", cfg.aux_loss, ["'' (none)", *sorted(AUX_LOSSES)], where=where("aux_loss"))
    if not cfg.name or os.sep in cfg.name or cfg.name in (".", ".."):
        fail("name", "a non-empty folder name without a path separator")
    if cfg.batch_size % (world * cfg.grad_accum):
        fail("batch_size", f"a multiple of world size x grad_accum = {world} x {cfg.grad_accum} "
                           f"(the global batch is split over {world} process(es) and {cfg.grad_accum} micro-batch(es))")
    if any(m < 0 for m in cfg.milestones) or cfg.milestones != sorted(cfg.milestones):
        fail("milestones", "epochs >= 0 in increasing order")
    if any(not isinstance(v, str) or not v for v in cfg.val_sets):
        fail("val_sets", "names or paths of .bin files")
    if cfg.margin_gradient != "exact" and "gradient" not in MARGINS[cfg.head].HYPERPARAMETERS:
        takes = sorted(name for name, head in MARGINS.items() if "gradient" in head.HYPERPARAMETERS)
        fail("margin_gradient", f"'exact' for head {cfg.head!r}; heads that take another: {', '.join(takes)}")
    if cfg.interclass_filtering_threshold and not MARGINS[cfg.head].cosine_margin:
        fail("interclass_filtering_threshold", f"0 for head {cfg.head!r} (filtering judges cosines; "
                                               f"{cfg.head!r} has none)")
    if cfg.schedule == "poly" and cfg.warmup_epochs >= cfg.epochs:
        fail("warmup_epochs", f"fewer than epochs={cfg.epochs} for the poly schedule (it decays after the warm-up)")

    options = backbone_options(cfg.backbone)
    for key in cfg.backbone_options:
        if key in ("dropout", "grad_checkpoint"):
            fail("backbone_options", f"options other than {key}, which is a config key of its own")
        if key not in options:
            fail("backbone_options", f"options of {cfg.backbone}: {', '.join(sorted(options)) or 'none'}")
    for key, wanted in (("dropout", cfg.dropout > 0), ("grad_checkpoint", cfg.grad_checkpoint)):
        if wanted and key not in options:
            supported = sorted(name for name in BACKBONES if key in backbone_options(name))
            fail(key, f"{'0' if key == 'dropout' else 'false'} for backbone {cfg.backbone!r}; "
                      f"backbones that take it: {', '.join(supported) or 'none'}")
    try:  # the network's constructor judges its options' values; on the meta device it costs nothing
        with torch.device("meta"):
            build_backbone_for(cfg)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where('backbone_options')}: backbone {cfg.backbone!r} refuses its options ({error})") from None
    try:  # the head's constructor judges its own options (ranges, types)
        build_margin(cfg.head, 2, 2, **head_hyperparameters(cfg))
    except (ValueError, TypeError) as error:
        keys = ["head"] + [key for key in ("s", "m") if key in MARGINS[cfg.head].HYPERPARAMETERS] + \
            (["head_options"] if cfg.head_options else [])
        raise ConfigError(f"{', '.join(where(key) for key in keys)}: head {cfg.head!r} refuses its options "
                          f"({error})") from None
    try:
        check_precision(cfg.precision, resolve_device(cfg.device))
    except UsageError as error:
        key = "precision" if "precision" in str(error) else "device"
        raise ConfigError(f"{where(key)}: {error}") from None


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
