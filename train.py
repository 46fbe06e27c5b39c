"""Train a face-recognition backbone with a margin head, on one process, many GPUs or many machines.

    python train.py configs/demo.py                                  # one process (GPU if present)
    torchrun --nproc_per_node=8 train.py configs/ms1m_ir100_arcface.py
    python train.py configs/casia_ir50_arcface.py --lr=0.05 --batch_size=256

Reads top to bottom: build (data, model, optimizers), resume, then the loop of train step ->
log -> evaluate -> checkpoint. Everything tunable lives in config.py. The run folder
output_dir/name holds config.json, log.txt, metrics.jsonl, checkpoint.pt and backbone.pt; a run
restarted with the same config continues from its checkpoint.pt exactly where it stopped.
"""

import contextlib
import inspect
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from backbone import build_backbone
from config import Config, config_to_dict, load_config
from dataset import TrainingView, normalize_images, open_bin, open_training_set
from evaluation.features import PRECISIONS, autocast_context, extract_embeddings
from evaluation.verification import evaluate_verification
from margin import MARGINS, build_aux_loss, build_margin
from training import checkpoint
from training.distributed import ShardedClassifier, DistributedContext, all_reduce_mean, init_distributed
from training.run_log import RunLog, git_commit
from training.sampler import StepBatchSampler
from training.schedule import lr_factor

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def build_optimizer(module: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD or AdamW over `module`; with decay_bn_and_bias=False, 1-d parameters (BN, PReLU, biases)
    are not decayed."""
    decay = [p for p in module.parameters() if p.requires_grad and (cfg.decay_bn_and_bias or p.dim() > 1)]
    no_decay = [p for p in module.parameters() if p.requires_grad and not cfg.decay_bn_and_bias and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    raise ValueError(f"optimizer={cfg.optimizer!r}; valid: sgd, adamw")


def head_hyperparameters(cfg: Config) -> dict:
    """s and m for the heads that take them (softmax takes neither), plus head_options."""
    accepted = inspect.signature(MARGINS[cfg.head]).parameters if cfg.head in MARGINS else {}
    hyper = {key: getattr(cfg, key) for key in ("s", "m") if key in accepted}
    if "m" in hyper and accepted["m"].annotation in (int, "int"):
        hyper["m"] = int(hyper["m"]) if float(hyper["m"]).is_integer() else hyper["m"]  # SphereFace's integer m
    return {**hyper, **cfg.head_options}


def resolve_val_sets(cfg: Config) -> dict[str, str]:
    folder = cfg.val_dir or (cfg.train_data if os.path.isdir(cfg.train_data) else os.path.dirname(cfg.train_data))
    paths = {}
    for name in cfg.val_sets:
        path = name if name.endswith(".bin") else os.path.join(folder, f"{name}.bin")
        if not os.path.exists(path):
            raise FileNotFoundError(f"verification set {name!r}: {path} not found (set val_dir or val_sets)")
        paths[os.path.basename(path)[:-4]] = path
    return paths


def evaluate(backbone, val_sets, cfg: Config, device, step: int, log: RunLog, tracker: dict) -> dict:
    """Verification accuracy on every configured set; the latest is the result, the best is kept beside."""
    results = {}
    for name, (images, issame) in val_sets.items():
        embeddings, flipped = extract_embeddings(backbone, images, cfg.val_batch_size, device, cfg.precision,
                                                 channels_last=cfg.channels_last, progress=cfg.progress,
                                                 description=f"eval {name}")
        result = evaluate_verification(embeddings, issame, flipped, protocol=cfg.val_protocol)
        best = max(tracker.get(name, 0.0), result.accuracy_mean)
        tracker[name] = best
        results[name] = result.accuracy_mean
        log.info(f"step {step} {name}: accuracy {result.accuracy_mean:.4f} ± {result.accuracy_std:.4f} "
                 f"(best so far {best:.4f}), xnorm {result.xnorm:.2f}")
        log.event("val", step=step, set=name, **result.to_json(), best_accuracy=best)
        log.curves(step, trace=name, val_accuracy=result.accuracy_mean)
    return results


def save_checkpoint(run_dir, cfg, context, backbone, classifier, aux_loss, optimizers, scaler, position, tracker):
    """Every rank takes part (the head's shards are gathered); rank 0 writes."""
    head_state = classifier.full_state()
    optimizer_states = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        if name == "head":
            state["state"] = {k: {n: classifier.gather_rows(v) if torch.is_tensor(v) else v for n, v in s.items()}
                              for k, s in state["state"].items()}
        optimizer_states[name] = state
    rng = [None] * context.world
    if context.enabled:
        torch.distributed.all_gather_object(rng, checkpoint.rng_state())
    else:
        rng = [checkpoint.rng_state()]
    if not context.is_main:
        return
    checkpoint.atomic_save({
        "backbone": backbone.state_dict(), "head": head_state,
        "aux_loss": aux_loss.state_dict() if aux_loss is not None else None,
        "optimizers": optimizer_states, "scaler": scaler.state_dict(), "rng": rng,
        "position": position, "best_accuracy": tracker, "config": config_to_dict(cfg),
    }, os.path.join(run_dir, "checkpoint.pt"))
    checkpoint.atomic_save(checkpoint.backbone_file(cfg.backbone, cfg.embedding_size, backbone.state_dict(),
                                                    config_to_dict(cfg)), os.path.join(run_dir, "backbone.pt"))


def main(argv=None) -> dict:
    cfg = load_config(argv)
    context = init_distributed(cfg.device)
    device = context.device
    torch.manual_seed(cfg.seed * 1000 + context.rank)
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision={cfg.precision!r}; valid: {', '.join(PRECISIONS)}")
    run_dir = os.path.join(cfg.output_dir, cfg.name)
    log = RunLog(run_dir, context.is_main, cfg.name, cfg.visdom, cfg.visdom_server, cfg.visdom_port)
    log.info(f"git {git_commit(REPO_DIR)} | {context.world} process(es) on {device} | run folder {run_dir}")
    log.info("config: " + json.dumps(config_to_dict(cfg), sort_keys=True))
    if context.is_main:
        with open(os.path.join(run_dir, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config_to_dict(cfg), handle, indent=2, sort_keys=True)

    # ============ data ============
    train_set = open_training_set(cfg.train_data, cfg.train_root, skip_corrupt=cfg.skip_corrupt)
    num_classes = cfg.num_classes or train_set.num_classes or int(train_set.labels().max()) + 1
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, context.world, context.rank, cfg.grad_accum, cfg.seed)
    loader = torch.utils.data.DataLoader(TrainingView(train_set, cfg.flip, cfg.seed), batch_sampler=sampler,
                                         num_workers=cfg.workers, pin_memory=device.type == "cuda")
    val_sets = {name: open_bin(path) for name, path in resolve_val_sets(cfg).items()} if context.is_main else {}
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    log.info(f"{len(train_set)} images of {num_classes} identities; global batch {cfg.batch_size} = "
             f"{context.world} process(es) x {cfg.grad_accum} micro-batch(es) x {sampler.micro_batch}; "
             f"{steps_per_epoch} steps per epoch, {total_steps} steps in all")

    # ============ model ============
    backbone = build_backbone(cfg.backbone, cfg.embedding_size, **({"dropout": cfg.dropout} if cfg.dropout else {}))
    if cfg.sync_bn and context.enabled:
        backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    backbone = backbone.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
    head_context = context if cfg.sharded_head else DistributedContext(device=device)
    classifier = ShardedClassifier(lambda classes: build_margin(cfg.head, cfg.embedding_size, classes,
                                                                **head_hyperparameters(cfg)),
                                   num_classes, head_context, cfg.sample_rate, cfg.seed).to(device)
    aux_loss = build_aux_loss(cfg.aux_loss, num_classes, cfg.embedding_size).to(device) if cfg.aux_loss else None
    optimizers = {"backbone": build_optimizer(backbone, cfg), "head": build_optimizer(classifier, cfg)}
    if aux_loss is not None:
        optimizers["aux"] = torch.optim.SGD(aux_loss.parameters(), lr=cfg.aux_lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # ============ resume ============
    position = {"step": 0, "epoch": 0, "step_in_epoch": 0}
    tracker: dict[str, float] = {}
    checkpoint_path = cfg.resume or os.path.join(run_dir, "checkpoint.pt")
    if os.path.exists(checkpoint_path):
        state = checkpoint.load(checkpoint_path)
        backbone.load_state_dict(state["backbone"])
        classifier.load_full_state(state["head"])
        if aux_loss is not None:
            aux_loss.load_state_dict(state["aux_loss"])
        for name, optimizer in optimizers.items():
            saved = state["optimizers"][name]
            if name == "head":
                saved["state"] = {k: {n: classifier.local_rows(v) if torch.is_tensor(v) else v for n, v in s.items()}
                                  for k, s in saved["state"].items()}
            optimizer.load_state_dict(saved)
        scaler.load_state_dict(state["scaler"])
        position, tracker = state["position"], state["best_accuracy"]
        if len(state["rng"]) == context.world:
            checkpoint.set_rng_state(state["rng"][context.rank])
        log.info(f"resumed from {checkpoint_path} at step {position['step']} (epoch {position['epoch']})")
    elif cfg.resume:
        raise FileNotFoundError(f"--resume={cfg.resume}: no such checkpoint")

    raw_backbone = backbone
    train_backbone = torch.compile(backbone) if cfg.compile else backbone
    wrap = (lambda m: DistributedDataParallel(m, device_ids=[device.index] if device.type == "cuda" else None)) \
        if context.enabled else (lambda m: m)
    train_backbone = wrap(train_backbone)
    train_classifier = classifier if cfg.sharded_head else wrap(classifier)
    train_aux = wrap(aux_loss) if aux_loss is not None else None
    ddp_modules = [m for m in (train_backbone, train_classifier, train_aux) if isinstance(m, DistributedDataParallel)]
    trainable = [p for m in (backbone, classifier) for p in m.parameters()]

    # ============ train ============
    accuracy_at_start = evaluate(raw_backbone, val_sets, cfg, device, 0, log, {}) \
        if cfg.eval_at_start and position["step"] == 0 and context.is_main and val_sets else {}
    step, consecutive_bad = position["step"], 0
    window = {"loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "steps": 0, "images": 0, "start": time.time()}
    train_seconds, latest = 0.0, {}
    bar = tqdm(total=total_steps, initial=step, disable=not (cfg.progress and context.is_main), unit="step",
               dynamic_ncols=True)
    first_epoch, first_step_in_epoch = position["epoch"], position["step_in_epoch"]
    for epoch in range(first_epoch, cfg.epochs):
        sampler.set_position(epoch, first_step_in_epoch if epoch == first_epoch else 0)
        micro_batches = iter(loader)
        for step_in_epoch in range(sampler.start_step, steps_per_epoch):
            if step >= total_steps:
                break
            step_start = time.time()
            factor = lr_factor(step, cfg.schedule, total_steps, steps_per_epoch,
                               round(cfg.warmup_epochs * steps_per_epoch), cfg.milestones, cfg.lr_gamma, cfg.poly_power)
            for name in ("backbone", "head"):
                for group in optimizers[name].param_groups:
                    group["lr"] = cfg.lr * factor
            classifier.set_step(step)

            # ---- one optimizer step over grad_accum micro-batches
            step_loss = torch.zeros((), device=device)
            step_accuracy = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                images, labels = next(micro_batches)
                images = normalize_images(images.to(device, non_blocking=True))
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = labels.to(device, non_blocking=True)
                last = micro == cfg.grad_accum - 1
                with contextlib.ExitStack() as stack:
                    if not last:
                        for module in ddp_modules:
                            stack.enter_context(module.no_sync())
                    with autocast_context(device, cfg.precision):
                        embeddings = train_backbone(images)
                        loss, accuracy = train_classifier(embeddings.float(), labels)
                        total = loss + classifier.head.regularizer(embeddings.float())
                        if train_aux is not None:
                            total = total + cfg.aux_weight * train_aux(embeddings.float(), labels)
                    scaler.scale(total / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
                step_accuracy += accuracy.detach() / cfg.grad_accum
            step_loss = all_reduce_mean(step_loss, context)
            step_accuracy = all_reduce_mean(step_accuracy, context)

            for optimizer in optimizers.values():
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
            if cfg.sharded_head and context.enabled:
                head_square = torch.nn.utils.get_total_norm([p.grad for p in classifier.parameters()
                                                             if p.grad is not None]) ** 2
                torch.distributed.all_reduce(head_square)
                backbone_square = torch.nn.utils.get_total_norm([p.grad for p in backbone.parameters()
                                                                 if p.grad is not None]) ** 2
                grad_norm = (backbone_square + head_square).sqrt()
            loss_value = step_loss.item()
            finite = math.isfinite(loss_value) and (cfg.precision == "fp16" or bool(torch.isfinite(grad_norm)))
            if not finite:
                consecutive_bad += 1
                log.info(f"step {step}: non-finite loss {loss_value} / gradient norm {float(grad_norm)}: step skipped "
                         f"({consecutive_bad} in a row)")
                log.event("nonfinite", step=step, loss=str(loss_value), grad_norm=str(float(grad_norm)))
                for optimizer in optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                scaler.update()
                if consecutive_bad >= cfg.max_nonfinite_steps:
                    log.info(f"stopping: {consecutive_bad} consecutive non-finite steps. Try a lower lr "
                             "(--lr), warm-up (--warmup_epochs=1), gradient clipping (--clip_grad_norm=5), "
                             "precision fp32 or bf16 instead of fp16, or a smaller margin/scale (--m, --s). "
                             "The last checkpoint holds only finite weights.")
                    raise SystemExit(3)
                continue
            consecutive_bad = 0
            if cfg.clip_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(trainable, cfg.clip_grad_norm, grad_norm)
            for optimizer in optimizers.values():
                scaler.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
            scaler.update()
            step += 1
            train_seconds += time.time() - step_start

            # ---- log
            window["loss"] += loss_value
            window["accuracy"] += step_accuracy.item()
            window["grad_norm"] += float(grad_norm)
            window["steps"] += 1
            window["images"] += cfg.batch_size
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_value:.3f}", acc=f"{step_accuracy.item():.3f}",
                            lr=f"{cfg.lr * factor:.2e}")
            if step % cfg.log_freq == 0 or step == total_steps:
                seconds = time.time() - window["start"]
                record = {"loss": window["loss"] / window["steps"], "train_accuracy": window["accuracy"] / window["steps"],
                          "grad_norm": window["grad_norm"] / window["steps"], "lr": cfg.lr * factor,
                          "images_per_second": window["images"] / max(seconds, 1e-9)}
                log.event("train", step=step, epoch=epoch, **record)
                log.curves(step, **record)
                window = {"loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "steps": 0, "images": 0, "start": time.time()}
            end_of_run = step == total_steps
            position = {"step": step, "epoch": epoch + (step_in_epoch + 1 == steps_per_epoch),
                        "step_in_epoch": (step_in_epoch + 1) % steps_per_epoch}
            # ---- evaluate and checkpoint
            if (cfg.test_freq and step % cfg.test_freq == 0) or end_of_run:
                if context.is_main and val_sets:
                    latest = evaluate(raw_backbone, val_sets, cfg, device, step, log, tracker)
                if context.enabled:
                    torch.distributed.barrier()
            if (cfg.save_freq and step % cfg.save_freq == 0) or end_of_run:
                save_checkpoint(run_dir, cfg, context, raw_backbone, classifier, aux_loss, optimizers, scaler,
                                position, tracker)
                log.event("checkpoint", step=step)
        if step >= total_steps:
            break
    bar.close()
    summary = {"run_dir": run_dir, "steps": step, "train_seconds": round(train_seconds, 2),
               "accuracy_at_start": accuracy_at_start, "accuracy": latest, "best_accuracy": tracker}
    log.event("summary", **summary)
    log.close()
    if context.enabled:
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
