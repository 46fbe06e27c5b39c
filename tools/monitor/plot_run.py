"""Curves of a training run (loss, train accuracy, learning rate, verification accuracy) as a PNG,
read from the run's metrics.jsonl; optionally the run's result as one JSON line.

    python tools/monitor/plot_run.py runs/demo --json            # curves in runs/demo/curves.png
    python tools/monitor/plot_run.py runs/demo --out result/demo_curves.png   # the README's picture

The JSON object holds `accuracy_before` and `accuracy_after` (the first verification set's
accuracy before and after training, fractions), `train_seconds` (the training steps alone), and the
latest and best accuracy of every set.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from runtime import DataFormatError, UserError, atomic_file, check_writable, run_cli  # noqa: E402


def read_events(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise DataFormatError(path, f"not found: is {run_dir} a run folder written by train.py?")
    events = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    events.append(json.loads(line))
                except ValueError as error:
                    raise DataFormatError(path, f"not a JSON event ({error})", f"line {number}") from None
    return events


def plot(events, out_path, title):
    train = [e for e in events if e["event"] == "train"]
    val = [e for e in events if e["event"] == "val"]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [e["step"] for e in train]
    axes[0].plot(steps, [e["loss"] for e in train], label="loss")
    axes[0].set(title="training loss", xlabel="step")
    axes[1].plot(steps, [e["train_accuracy"] for e in train], label="train accuracy")
    axes[1].set(title="accuracy", xlabel="step", ylim=(0, 1.02))
    for name in dict.fromkeys(e["set"] for e in val):
        points = [(e["step"], e["accuracy_mean"]) for e in val if e["set"] == name]
        axes[1].plot(*zip(*points), marker="o", label=f"{name} verification")
    axes[1].legend(loc="lower right")
    axes[2].plot(steps, [e["lr"] for e in train])
    axes[2].set(title="learning rate", xlabel="step")
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    with atomic_file(out_path) as handle:
        figure.savefig(handle, dpi=100, format="png")
    plt.close(figure)


def first_step_reaching(events, accuracy: float, set_name: str):
    """The first evaluated step whose accuracy on `set_name` is at least `accuracy`, or None."""
    return next((e["step"] for e in events if e["event"] == "val" and e["set"] == set_name
                 and e["accuracy_mean"] >= accuracy), None)


def summarise(events, reach: float | None = None) -> dict:
    summary = next((e for e in reversed(events) if e["event"] == "summary"), None)
    if summary is None:
        raise UserError("the run has no summary yet (still training, or stopped early)")
    first_set = next((e["set"] for e in events if e["event"] == "val"), None)
    extra = {"reach": reach, "first_step_reaching": first_step_reaching(events, reach, first_set)} \
        if reach is not None else {}
    return {
        **extra,
        "accuracy_before": summary["accuracy_at_start"].get(first_set),
        "accuracy_after": summary["accuracy"].get(first_set),
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "set": first_set,
        "accuracy": summary["accuracy"],
        "best_accuracy": summary["best_accuracy"],
        "accuracy_at_start": summary["accuracy_at_start"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    parser.add_argument("--json", action="store_true", help="print the run's result as one JSON line")
    parser.add_argument("--reach", type=float, metavar="ACC",
                        help="with --json, also the first evaluated step whose accuracy is at least ACC")
    args = parser.parse_args(argv)
    if args.reach is not None and not args.json:
        parser.error("--reach adds first_step_reaching to the JSON line: give --json too")
    out = args.out or os.path.join(args.run_dir, "curves.png")
    events = read_events(args.run_dir)
    check_writable(out, "--out" if args.out else "curves (default: RUN_DIR/curves.png)",
                   instead="give --out PATH in a folder you can write")
    plot(events, out, os.path.basename(os.path.normpath(args.run_dir)))
    print(f"curves -> {out}")
    if args.json:
        print(json.dumps(summarise(events, args.reach)))


if __name__ == "__main__":
    run_cli(main)
