"""Every hyperparameter of a training run, with its default and why.

Defaults reproduce the old repository's CASIA-WebFace recipe (MobileFaceNet + ArcFace s=32 m=0.5,
SGD 0.1 Nesterov, weight decay 5e-4, x0.1 at epochs 6/11/16, 18 epochs, batch 200). A run is
configured by an override file in configs/ that sets only what differs, then `--key=value` flags:

    python train.py configs/casia_ir50_arcface.py --lr=0.05 --batch_size=256

`load_config(argv)` does that resolution; it is what train.py calls and what tests import.
"""

import ast
import dataclasses
import json
import runpy
import sys
import typing
from dataclasses import dataclass, field


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
    workers: int = 4  # DataLoader processes per training process; ~5,000 decoded images/s each
    flip: bool = True  # random horizontal mirroring, the standard face augmentation
    skip_corrupt: bool = False  # replace unreadable records by the next one (and report them) instead of stopping

    # ============ model ============
    backbone: str = "mobilefacenet"  # any name in backbone.BACKBONES
    embedding_size: int = 128  # the old repository's MobileFaceNet width; IR nets use 512
    dropout: float = 0.0  # before the embedding FC of the IR/ResNet nets; insightface trains with 0
    head: str = "arcface"  # any name in margin.MARGINS
    s: float = 32.0  # logit scale; 32 as the old recipe (64 is the ArcFace paper's for large sets)
    m: float = 0.5  # angular margin (arcface), additive (cosface, 0.35), or multiplicative (sphereface, 4)
    head_options: dict = field(default_factory=dict)  # further head hyperparameters, e.g. {"easy_margin": true}
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
    poly_power: float = 2.0
    clip_grad_norm: float = 0.0  # 0 = off; insightface clips at 5 with AdamW/large batches
    precision: str = "bf16"  # bf16 | fp16 (GradScaler) | fp32; autocast on CUDA and on the CPU
    channels_last: bool = True  # NHWC convolutions: faster on tensor cores and on the CPU
    compile: bool = False  # torch.compile the backbone (minutes of compile time, then faster steps)
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
    resume: str = ""  # a checkpoint to start from; by default output_dir/name/checkpoint.pt if it exists


def _field_types() -> dict[str, typing.Any]:
    return typing.get_type_hints(Config)


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
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"--{key}={text!r}: not a valid {getattr(kind, '__name__', kind)} ({error})") from None
    raise TypeError(f"field {key} has unsupported type {kind}")


def _check_value(key: str, value, kind, source: str):
    """Values from override files are Python objects: check (and widen int to float) them."""
    origin = typing.get_origin(kind) or kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, origin) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{source}: {key} = {value!r} should be {getattr(kind, '__name__', kind)}")
    if origin is list:
        item_type = typing.get_args(kind)[0]
        return [float(v) if item_type is float and isinstance(v, int) else v for v in value]
    return value


def load_config(argv: list[str] | None = None) -> Config:
    """[override.py ...] [--key=value ...] -> Config. Unknown keys are errors naming the valid ones."""
    argv = sys.argv[1:] if argv is None else argv
    types = _field_types()
    values: dict[str, typing.Any] = {}

    def check_key(key: str, source: str) -> None:
        if key not in types:
            raise KeyError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(sorted(types))}")

    for arg in argv:
        if arg == "--":  # torchrun needs it before overrides that abbreviate its own flags (--s, --m)
            continue
        if arg.startswith("--"):
            key, has_value, text = arg[2:].partition("=")
            key = key.replace("-", "_")
            check_key(key, arg)
            if not has_value:
                if types[key] is not bool:
                    raise ValueError(f"{arg}: give a value as --{key}=VALUE")
                text = "true"
            values[key] = parse_value(key, text, types[key])
        else:
            overrides = {k: v for k, v in runpy.run_path(arg).items()
                         if not k.startswith("_") and not isinstance(v, type(ast))}
            for key, value in overrides.items():
                check_key(key, arg)
                values[key] = _check_value(key, value, types[key], arg)
    return Config(**values)


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)
