"""Train a face-recognition backbone with a margin head, on one process, many GPUs or many machines.

    python train.py configs/demo.py                                  # one process (GPU if present)
    torchrun --nproc_per_node=8 train.py configs/ms1m_ir100_arcface.py
    python train.py configs/casia_ir50_arcface.py --lr=0.05 --batch_size=256

Reads top to bottom: build (data, model, optimizers), resume, then the loop of train step ->
log -> evaluate -> checkpoint. Everything tunable lives in config.py. The run folder
output_dir/name holds config.json, log.txt, metrics.jsonl, checkpoint.pt and backbone.pt; a run
restarted with the same config continues from its checkpoint.pt exactly where it stopped.
"""

import json
import os
import sys
import time

import torch
from tqdm import tqdm

from config import Config, config_to_dict, load_config
from dataset import DataFormatError, TrainingView, open_bin, open_training_set
from evaluation.features import extract_embeddings
from runtime import keep_freed_cpu_memory, load_torch_file
from evaluation.verification import evaluate_verification
from training import checkpoint
from training.components import build_model, build_optimizers
from training.distributed import init_distributed
from training.run_log import RunLog, git_commit
from training.sampler import StepBatchSampler
from training.schedule import lr_factor
from training.step import TrainStep

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


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


def new_log_window() -> dict:
    """Sums over the steps since the last log line (time: training steps only, not evaluation)."""
    return {"loss": 0.0, "accuracy": 0.0, "grad_norm": 0.0, "steps": 0, "images": 0, "seconds": 0.0}


def main(argv=None) -> dict:
    cfg = load_config(argv)
    context = init_distributed(cfg.device)
    device = context.device
    keep_freed_cpu_memory(device)  # on the CPU: reuse activation buffers instead of re-faulting their pages
    torch.manual_seed(cfg.seed * 1000 + context.rank)
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
    backbone, classifier, aux_loss = build_model(cfg, context, num_classes)
    optimizers, scaler = build_optimizers(cfg, backbone, classifier, aux_loss)

    # ============ resume ============
    position = {"step": 0, "epoch": 0, "step_in_epoch": 0}
    tracker: dict[str, float] = {}
    checkpoint_path = cfg.resume or os.path.join(run_dir, "checkpoint.pt")
    if os.path.exists(checkpoint_path):
        position, tracker = checkpoint.restore_run(load_torch_file(checkpoint_path), context, backbone,
                                                   classifier, aux_loss, optimizers, scaler)
        log.info(f"resumed from {checkpoint_path} at step {position['step']} (epoch {position['epoch']})")
    elif cfg.resume:
        raise FileNotFoundError(f"--resume={cfg.resume}: no such checkpoint")

    train_step = TrainStep(cfg, context, backbone, classifier, aux_loss, optimizers, scaler)

    # ============ train ============
    accuracy_at_start = evaluate(backbone, val_sets, cfg, device, 0, log, {}) \
        if cfg.eval_at_start and position["step"] == 0 and context.is_main and val_sets else {}
    step, consecutive_bad = position["step"], 0
    window = new_log_window()
    train_seconds, latest, time_up = 0.0, {}, False
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
            train_step.set_lr(cfg.lr * factor)
            classifier.set_step(step)
            result = train_step(micro_batches)
            if not result.finite:
                consecutive_bad += 1
                log.info(f"step {step}: non-finite loss {result.loss} / gradient norm {result.grad_norm}: "
                         f"step skipped ({consecutive_bad} in a row)")
                log.event("nonfinite", step=step, loss=str(result.loss), grad_norm=str(result.grad_norm))
                if consecutive_bad >= cfg.max_nonfinite_steps:
                    log.info(f"stopping: {consecutive_bad} consecutive non-finite steps. Try a lower lr "
                             "(--lr), warm-up (--warmup_epochs=1), gradient clipping (--clip_grad_norm=5), "
                             "precision fp32 or bf16 instead of fp16, or a smaller margin/scale (--m, --s). "
                             "The last checkpoint holds only finite weights.")
                    raise SystemExit(3)
                continue
            consecutive_bad = 0
            step += 1
            step_seconds = time.time() - step_start
            train_seconds += step_seconds

            # ---- log
            window["loss"] += result.loss
            window["accuracy"] += result.accuracy
            window["grad_norm"] += result.grad_norm
            window["steps"] += 1
            window["images"] += cfg.batch_size
            window["seconds"] += step_seconds
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{result.loss:.3f}", acc=f"{result.accuracy:.3f}",
                            lr=f"{cfg.lr * factor:.2e}", img_s=f"{cfg.batch_size / step_seconds:.0f}")
            if step % cfg.log_freq == 0 or step == total_steps:
                record = {"loss": window["loss"] / window["steps"], "train_accuracy": window["accuracy"] / window["steps"],
                          "grad_norm": window["grad_norm"] / window["steps"], "lr": cfg.lr * factor,
                          "images_per_second": window["images"] / max(window["seconds"], 1e-9)}
                log.event("train", step=step, epoch=epoch, **record)
                log.curves(step, **record)
                window = new_log_window()
            time_up = cfg.max_train_minutes > 0 and train_seconds >= 60 * cfg.max_train_minutes
            end_of_run = step == total_steps or time_up
            position = {"step": step, "epoch": epoch + (step_in_epoch + 1 == steps_per_epoch),
                        "step_in_epoch": (step_in_epoch + 1) % steps_per_epoch}
            # ---- evaluate and checkpoint
            if (cfg.test_freq and step % cfg.test_freq == 0) or end_of_run:
                if context.is_main and val_sets:
                    latest = evaluate(backbone, val_sets, cfg, device, step, log, tracker)
                if context.enabled:
                    torch.distributed.barrier()
            if (cfg.save_freq and step % cfg.save_freq == 0) or end_of_run:
                checkpoint.save_run(run_dir, config_to_dict(cfg), context, backbone, classifier, aux_loss,
                                    optimizers, scaler, position, tracker)
                log.event("checkpoint", step=step)
            if time_up:
                log.info(f"stopping after {train_seconds:.0f} s of training steps (max_train_minutes)")
                break
        if step >= total_steps or time_up:
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
    try:
        summary = main(sys.argv[1:])
    except (DataFormatError, FileNotFoundError) as error:  # bad or missing data: one line, no traceback
        sys.exit(f"error: {error}")
    print(json.dumps(summary))
