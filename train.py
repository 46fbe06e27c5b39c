"""Train a face-recognition backbone with a margin head, on one process, many GPUs or many machines.

    python train.py configs/demo.py                                  # one process (GPU if present)
    torchrun --nproc_per_node=8 train.py configs/arcface_torch/ms1mv3_r100.py
    python train.py configs/seed/casia_ir50_arcface.py --lr=0.05 --batch_size=256

Reads top to bottom: check everything (config, data, verification sets, initial weights), take the
run folder, build the training state and resume it, then the loop of step -> log -> checkpoint ->
evaluate. The run folder output_dir/name holds config.json (with its history), log.txt,
metrics.jsonl, checkpoint.pt (+ checkpoint.prev.pt) and backbone.pt; the same command restarted
continues exactly where the run stopped. SIGTERM/SIGINT stop it at the next step with a checkpoint.
"""

import dataclasses
import json
import os
import sys
import time

import torch
from tqdm import tqdm

from config import config_to_dict, load_config
from evaluation.features import extract_embeddings
from evaluation.verification import evaluate_verification
from runtime import UserError, check_writable, prepare_device, resolve_precision
from training.checkpoint import agree_on_resume, find_checkpoint, has_checkpoint, read_checkpoint, write_checkpoint
from training.components import build_train_state, cpu_training_precision, read_initial_backbone
from training.data import BadRecords, open_training_data, open_val_sets, resolve_val_sets, training_loader
from training.distributed import init_distributed
from training.run_folder import RunFolderLock, config_changes, record_config, refuse_changes
from training.run_log import RunLog, git_commit
from training.schedule import LearningRate
from training.step import StepWindow, TrainStep
from training.stop import StopRequest, any_process

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
NONFINITE_ADVICE = ("Try a lower lr (--lr), warm-up (--warmup_epochs=1), gradient clipping (--clip_grad_norm=5), "
                    "precision fp32 or bf16 instead of fp16, or a smaller margin/scale (--m, --s). "
                    "The last checkpoint holds only finite weights.")


def evaluate(backbone, val_sets, cfg, device, step: int, log: RunLog, best: dict) -> dict:
    """Verification accuracy on every set; the latest is the result, the best of every evaluation
    (the one at start included) is kept in `best`. A failure is logged, never raised: the run and
    its checkpoint matter more than one evaluation."""
    results = {}
    for name, (images, issame) in val_sets.items():
        try:
            embeddings, flipped = extract_embeddings(backbone, images, cfg.val_batch_size, device, cfg.precision,
                                                     channels_last=cfg.channels_last, progress=cfg.progress,
                                                     description=f"eval {name}")
            result = evaluate_verification(embeddings, issame, flipped, protocol=cfg.val_protocol)
        except Exception as error:  # noqa: BLE001 - reported in the log, the run goes on
            log.info(f"step {step} {name}: evaluation failed ({type(error).__name__}: {error}); training goes on")
            log.event("val_error", step=step, set=name, error=f"{type(error).__name__}: {error}")
            continue
        best[name] = max(best.get(name, 0.0), result.accuracy_mean)
        results[name] = result.accuracy_mean
        log.info(f"step {step} {name}: accuracy {result.accuracy_mean:.4f} ± {result.accuracy_std:.4f} "
                 f"(best so far {best[name]:.4f}), xnorm {result.xnorm:.2f}")
        log.event("val", step=step, set=name, **result.to_json(), best_accuracy=best[name])
        log.curves(step, trace=name, val_accuracy=result.accuracy_mean)
    return results


def report_window(window: StepWindow, log: RunLog, bar, cfg, total_steps: int, epoch: int, lr: float,
                  consecutive_bad: int) -> int:
    """Log the steps of `window` (one line and one metrics record for its finite steps, one line per skipped
    step) and return the count of consecutive non-finite steps at its end. An fp16 overflow of a finite
    loss is the GradScaler's own business: skipped, logged, not counted."""
    records = window.read()
    for record in records:
        if not record["skipped"]:
            consecutive_bad = 0
        elif record["overflowed"]:
            log.event("fp16_overflow", step=record["step"], grad_norm=str(record["grad_norm"]))
        else:
            consecutive_bad += 1
            log.info(f"step {record['step']}: non-finite loss {record['loss']} / gradient norm {record['grad_norm']}: "
                     f"no weight changed ({consecutive_bad} in a row)")
            log.event("nonfinite", step=record["step"], loss=str(record["loss"]), grad_norm=str(record["grad_norm"]))
    finite = [record for record in records if not record["skipped"]]
    if not finite:
        return consecutive_bad
    step = records[-1]["step"]
    summary = {"loss": sum(r["loss"] for r in finite) / len(finite),
               "train_accuracy": sum(r["accuracy"] for r in finite) / len(finite),
               "grad_norm": sum(r["grad_norm"] for r in finite) / len(finite), "lr": lr,
               "images_per_second": len(records) * cfg.batch_size / max(window.seconds, 1e-9)}
    eta = (total_steps - step) * window.seconds / len(records)
    log.info(f"step {step}/{total_steps} epoch {epoch} loss {summary['loss']:.4f} train accuracy "
             f"{summary['train_accuracy']:.4f} lr {lr:.3e} {summary['images_per_second']:.0f} images/s "
             f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
    log.event("train", step=step, epoch=epoch, **summary)
    log.curves(step, **summary)
    bar.set_postfix(epoch=epoch, loss=f"{summary['loss']:.3f}", acc=f"{summary['train_accuracy']:.3f}", lr=f"{lr:.2e}",
                    img_s=f"{summary['images_per_second']:.0f}")
    return consecutive_bad


def main(argv=None) -> dict:
    # ============ checks: nothing is built, and no run folder made, until every input is known good ============
    cfg = load_config(argv)
    context = init_distributed(cfg.device)
    device = context.device
    # `auto` becomes the precision this device runs fast, so that config.json and the log say what ran
    # (on the CPU measured below, once the inputs are known good).
    if not (cfg.precision == "auto" and device.type == "cpu"):
        cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device))
    prepare_device(device)  # CPU: reuse freed activation buffers; GPU: cuDNN times its kernels (fixed shapes)
    torch.manual_seed(cfg.seed * 1000 + context.rank)
    train_set, num_classes = open_training_data(cfg, context.world)
    cfg = dataclasses.replace(cfg, num_classes=num_classes)  # config.json and checkpoints record the real count
    val_sets = open_val_sets(resolve_val_sets(cfg)) if context.is_main else {}
    explicit = read_checkpoint(cfg.resume) if cfg.resume else None
    run_dir = os.path.join(cfg.output_dir, cfg.name)
    check_writable(run_dir, "run folder", folder=True, instead="choose another --output_dir (a folder you can write) "
                                                             "or --name")
    # A resume takes every weight from its checkpoint: init_backbone is read on a fresh start only.
    fresh = explicit is None and not has_checkpoint(run_dir)
    initial_backbone = read_initial_backbone(cfg) if cfg.init_backbone and fresh else None
    choice_lines = []
    if cfg.precision == "auto":  # the CPU: measured here at first use, then cached (backbone/cpu_choice.py)
        precision, choice_lines = cpu_training_precision(cfg, context)
        cfg = dataclasses.replace(cfg, precision=precision)
    with RunFolderLock(run_dir, context.is_main):  # one train.py per run folder
        return train(cfg, context, run_dir, train_set, val_sets, initial_backbone, explicit, choice_lines)


def train(cfg, context, run_dir: str, train_set, val_sets: dict, initial_backbone, explicit,
          choice_lines=()) -> dict:
    # ============ run folder: a resume knows what changed ============
    device, num_classes, config = context.device, cfg.num_classes, config_to_dict(cfg)
    resumed, resumed_from, fallback_note = (explicit, cfg.resume, None) if explicit else find_checkpoint(run_dir)
    agree_on_resume(resumed["step"] if resumed is not None else None, run_dir, context)
    changes = {}
    if resumed is not None:
        refused, changes = config_changes(resumed["config"], config)
        refuse_changes(refused, resumed_from, run_dir)
    log = RunLog(run_dir, context.is_main, cfg.name, cfg.visdom, cfg.visdom_server, cfg.visdom_port)
    log.info(f"git {git_commit(REPO_DIR)} | {context.world} process(es) on {device} in {cfg.precision} | "
             f"run folder {run_dir}")
    log.info("config: " + json.dumps(config, sort_keys=True))
    for line in choice_lines:
        log.info(f"cpu choice: {line}")
    if fallback_note:
        log.info(fallback_note)
        log.event("checkpoint_fallback", note=fallback_note)
    if context.is_main:
        record_config(run_dir, config, "resume" if resumed else "start", resumed["step"] if resumed else 0, changes)
    if changes:
        log.info("changed since the checkpoint: " + "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        log.event("config_change", step=resumed["step"], changes={k: list(v) for k, v in changes.items()})
    if log.visdom_url:
        log.info(f"live curves: {log.visdom_url}")

    # ============ data ============
    loader, sampler = training_loader(train_set, cfg, context)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    learning_rate = LearningRate(cfg, steps_per_epoch, total_steps, len(train_set))
    log.info(f"{len(train_set)} images of {num_classes} identities; global batch {cfg.batch_size} = "
             f"{context.world} process(es) x {cfg.grad_accum} micro-batch(es) x {sampler.micro_batch}; "
             f"{steps_per_epoch} steps per epoch, {total_steps} steps in all")
    if cfg.freeze_backbone_steps >= total_steps:
        log.info(f"freeze_backbone_steps={cfg.freeze_backbone_steps} covers all {total_steps} steps of the run: "
                 "only the head trains")

    # ============ training state: fresh, fine-tuned from a backbone file, or resumed ============
    state = build_train_state(cfg, context, num_classes)
    if resumed is not None:
        state.load_state_dict(resumed, context)
        log.info(f"resumed from {resumed_from} at step {state.step} (epoch {state.step // steps_per_epoch})"
                 + (f"; every weight comes from it (the run started from init_backbone {cfg.init_backbone}, "
                    "which a resume does not read)" if cfg.init_backbone else ""))
    elif initial_backbone is not None:
        weights, origin = initial_backbone
        state.backbone.load_state_dict(weights)
        log.info(f"backbone initialised from {origin}; the head starts fresh")
        log.event("init_backbone", source=origin)
    del resumed, explicit
    train_step = TrainStep(cfg, context, state)
    bad_records = BadRecords(log, state.bad_records)

    def save(reason: str) -> None:
        content = state.state_dict(context, steps_per_epoch)
        if context.is_main:
            write_checkpoint(run_dir, content, config)
            log.event("checkpoint", step=state.step, reason=reason)

    # ============ train ============
    accuracy_at_start = evaluate(state.backbone, val_sets, cfg, device, 0, log, state.best_accuracy) \
        if cfg.eval_at_start and state.step == 0 and val_sets else {}
    window, latest, train_seconds, consecutive_bad = StepWindow(), {}, 0.0, 0
    micro_batches, saved_at, stop = None, None, None
    if state.step >= total_steps:
        stop = "complete"
        log.info(f"nothing to do: the run is at step {state.step} of {total_steps}")
    bar = tqdm(total=total_steps, initial=min(state.step, total_steps), unit="step", dynamic_ncols=True,
               disable=not (cfg.progress and context.is_main))
    with StopRequest() as stop_request:
        while stop is None:
            epoch, step_in_epoch = divmod(state.step, steps_per_epoch)
            if micro_batches is None or step_in_epoch == 0:
                sampler.set_position(epoch, step_in_epoch)
                micro_batches = bad_records.micro_batches(iter(loader))
            step_start = time.time()
            lr = learning_rate(state.step)
            train_step.set_lr(lr)
            state.classifier.set_step(state.step)
            if state.step == cfg.freeze_backbone_steps > 0:
                log.info(f"step {state.step + 1}: the backbone starts to learn (freeze_backbone_steps)")
            result = train_step(micro_batches, frozen_backbone=state.step < cfg.freeze_backbone_steps)
            state.step += 1
            state.bad_records = bad_records.seen
            window.add(state.step, result, time.time() - step_start)
            bar.update(1)

            # ---- log: the window's results come back from the device here, and only here
            log_point = state.step % cfg.log_freq == 0 or state.step >= total_steps
            if log_point:
                consecutive_bad = report_window(window, log, bar, cfg, total_steps, epoch, lr, consecutive_bad)
                train_seconds += window.seconds
                window = StepWindow()

            # ---- why stop (every process agrees, so that all of them checkpoint at the same step;
            # with several processes that takes a collective, so they agree at log points)
            if log_point or not context.enabled:
                signalled, time_up = any_process([stop_request.signal is not None, cfg.max_train_minutes > 0 and
                                                  train_seconds + window.seconds >= 60 * cfg.max_train_minutes],
                                                 context)
                if signalled:
                    stop = stop_request.name or "signal"
                elif consecutive_bad >= cfg.max_nonfinite_steps:
                    stop = "nonfinite"
                elif state.step >= total_steps:
                    stop = "complete"
                elif time_up:
                    stop = "time"

            # ---- checkpoint, then evaluate
            evaluate_now = bool(cfg.test_freq and state.step % cfg.test_freq == 0) or stop in ("complete", "time")
            if (cfg.save_freq and state.step % cfg.save_freq == 0) or evaluate_now or stop is not None:
                save("stop: " + stop if stop else "periodic")
                saved_at = state.step
            if evaluate_now and cfg.val_sets:
                if context.is_main:
                    latest = evaluate(state.backbone, val_sets, cfg, device, state.step, log, state.best_accuracy)
                if context.enabled:
                    torch.distributed.barrier()
                save("evaluated")  # again, now with the best accuracies of this evaluation

    bar.close()
    if window.results:  # a signal between log points: the steps since the last one
        consecutive_bad = report_window(window, log, bar, cfg, total_steps, epoch, lr, consecutive_bad)
        train_seconds += window.seconds
    if stop == "nonfinite":
        log.info(f"stopping: {consecutive_bad} consecutive non-finite steps. {NONFINITE_ADVICE}")
    elif stop == "time":
        log.info(f"stopping after {train_seconds:.0f} s of training steps (max_train_minutes)")
    elif stop not in ("complete",):
        log.info(f"stopped by {stop} at step {state.step}; checkpoint written: rerun the same command to resume")
    summary = {"run_dir": run_dir, "steps": state.step, "train_seconds": round(train_seconds, 2),
               "accuracy_at_start": accuracy_at_start, "accuracy": latest, "best_accuracy": state.best_accuracy,
               "skipped_records": len(bad_records), "stopped": stop, "checkpoint_step": saved_at}
    log.event("summary", **summary)
    log.close()
    if context.enabled:
        # Leave together: a rank that tears its gloo group down while rank 0 still writes the last
        # checkpoint can abort at exit (std::terminate), and torchrun then reports the run failed.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if stop == "nonfinite":
        raise SystemExit(3)
    if stop not in ("complete", "time"):  # a signal: a scheduler sees the job as interrupted, not done
        if context.is_main:
            print(json.dumps(summary))
        raise SystemExit(128 + stop_request.signal if stop_request.signal else 1)
    return summary


if __name__ == "__main__":
    try:
        summary = main(sys.argv[1:])
    except UserError as error:  # bad input: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun one summary, rank 0's (it alone evaluates)
        print(json.dumps(summary))
