"""Feature-space animations and theta distributions: softmax vs softmax + center loss vs ArcFace.

Draws, from this repository's heads and synthetic faces (the runs are training/feature_space.py),
two kinds of figure:

* ``softmax.gif``, ``softmax_center.gif``, ``arcface.gif``: a small CNN with a 2-D embedding
  (the visualisation of Wen et al., "A Discriminative Feature Learning Approach for Deep Face
  Recognition", ECCV 2016, Fig. 2-3, whose LeNets++ also ends in a 2-unit layer) is trained on a
  few synthetic identities three times from the same seed; each frame plots the embeddings of a
  fixed held-out set, coloured by identity, at one point of training.  Softmax and softmax +
  center loss frames show the raw 2-D features, the head's class directions (dashed) and, for the
  center loss, its learnt centres (crosses).  ArcFace (Deng et al., "ArcFace: Additive Angular
  Margin Loss for Deep Face Recognition", CVPR 2019, whose Fig. 1 draws the same 8-class 2-D toy)
  only sees directions, so its frames show the normalised features on the unit circle with the
  class-centre directions; its network ends in BatchNorm, as the paper's do (see training.feature_space.SmallCNN).
* ``theta_distributions.png``: for each run, a histogram of the angle between each held-out
  feature and its own class centre (the head's weight row), against the angle to the nearest
  other centre; a second row repeats softmax vs ArcFace with a 64-D embedding, where angles
  behave as in a real face model.

The images are rendered once, in memory::

    python tools/model/feature_space.py --out result/feature_space [--classes 8]
        [--images-per-class 150] [--plot-images-per-class 40] [--epochs 30]
        [--wide-epochs 15] [--frames 40] [--difficulty 0.3] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import matplotlib

matplotlib.use("Agg")  # files only: no display on the training machines
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset.synthetic import SyntheticFaces  # noqa: E402
from runtime import check_writable, l2_normalize, run_cli  # noqa: E402
from training.feature_space import (ANIMATED_RUNS, MAX_CLASSES, WIDE_EMBEDDING, WIDE_RUNS, Trajectory,  # noqa: E402
                                    angles_to_centres, cluster_spread, render_identities, steps_per_epoch, train)


def class_colours(num_classes: int) -> np.ndarray:
    palette = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    return np.array([palette(i) for i in range(num_classes)])


def draw_frame(trajectory: Trajectory, index: int, labels: np.ndarray, total_epochs: int) -> Image.Image:
    """One frame of a run's animation as an RGB image."""
    run = trajectory.run
    features, weight = trajectory.features[index], trajectory.head_weights[index]
    centres = trajectory.loss_centres[index]
    colours = class_colours(len(weight))
    figure, axes = plt.subplots(figsize=(4.8, 5.0), dpi=80)
    if run.head == "softmax":
        points = features
        shown = features if centres is None else np.concatenate([features, centres])
        limit = 1.15 * np.abs(shown).max()
        directions = l2_normalize(weight) * 2 * limit
        caption = "2-D features; dashed: class weight directions"
    else:
        points = l2_normalize(features)
        limit = 1.3
        directions = l2_normalize(weight) * 1.25
        axes.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.75", lw=1))
        caption = "normalised features on the unit circle; dashed: class centres"
    for c, direction in enumerate(directions):
        axes.plot([0, direction[0]], [0, direction[1]], "--", color=colours[c], lw=1.2)
    axes.scatter(points[:, 0], points[:, 1], s=7, c=colours[labels], alpha=0.7, linewidths=0)
    if centres is not None:
        axes.scatter(centres[:, 0], centres[:, 1], s=50, marker="X", c=colours, edgecolors="black")
        caption += "; X: center-loss centres"
    axes.set_xlim(-limit, limit)
    axes.set_ylim(-limit, limit)
    axes.set_aspect("equal")
    axes.tick_params(labelsize=7)
    axes.set_title(f"{run.title}\nepoch {trajectory.epochs[index]:.1f}/{total_epochs}, "
                   f"held-out accuracy {100 * trajectory.accuracies[index]:.0f}%", fontsize=10)
    axes.set_xlabel(caption, fontsize=7)
    figure.tight_layout()
    figure.canvas.draw()
    image = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
    plt.close(figure)
    return image


def save_animation(trajectory: Trajectory, labels: np.ndarray, total_epochs: int, path: str,
                   frame_ms: int = 150, hold_ms: int = 2000) -> None:
    """Writes the run as a looping GIF that rests on its last frame for ``hold_ms``."""
    frames = [draw_frame(trajectory, i, labels, total_epochs) for i in range(len(trajectory.epochs))]
    durations = [frame_ms] * (len(frames) - 1) + [hold_ms]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)


def plot_theta_distributions(trajectories: list[Trajectory], labels: np.ndarray, path: str) -> None:
    """One histogram panel per run (end of training, held-out set), three to a row."""
    angles = [angles_to_centres(t.features[-1], t.head_weights[-1], labels) for t in trajectories]
    widest = min(180, 30 * math.ceil(max(other.max() for _, other in angles) / 30))
    bins = np.linspace(0, widest, widest // 2 + 1)
    columns = 3
    rows = math.ceil((len(trajectories) + 1) / columns)  # +1: a panel that explains the plot
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), dpi=100,
                                squeeze=False)
    for axes, trajectory, (own, other) in zip(grid.flat, trajectories, angles):
        axes.hist(own, bins, alpha=0.7, color="tab:blue", label=f"own centre (mean {own.mean():.0f}°)")
        axes.hist(other, bins, alpha=0.6, color="tab:orange",
                  label=f"nearest other (mean {other.mean():.0f}°)")
        axes.set_title(f"{trajectory.run.title}, {trajectory.run.embedding_size}-D features\n"
                       f"held-out accuracy {100 * trajectory.accuracies[-1]:.0f}%", fontsize=9)
        axes.set_xlim(0, widest)
        axes.set_ylim(top=1.3 * axes.get_ylim()[1])  # headroom for the legend
        axes.set_xlabel("angle θ to class centre (degrees)", fontsize=8)
        axes.set_ylabel("held-out images", fontsize=8)
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(trajectories):]:
        axes.axis("off")
    grid.flat[len(trajectories)].text(
        0.0, 0.5,
        "For each held-out image after training: the angle\n"
        "θ between its feature and its own class centre\n"
        "(the head's weight row, blue), and the angle to\n"
        "the nearest other class centre (orange).\n\n"
        "Compact classes: blue piled up near 0°.\n"
        "Separated classes: a wide gap before orange.\n"
        "Center loss and a margin head both narrow the\n"
        "blue peak and widen the gap.",
        fontsize=9, va="center")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (docs/models.md's figures: result/feature_space)")
    parser.add_argument("--classes", type=int, default=8, help=f"identities (2-{MAX_CLASSES})")
    parser.add_argument("--images-per-class", type=int, default=150, help="training images per identity")
    parser.add_argument("--plot-images-per-class", type=int, default=40,
                        help="held-out images per identity that the figures show")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--wide-epochs", type=int, default=15,
                        help=f"epochs of the {WIDE_EMBEDDING}-D runs (0 skips them)")
    parser.add_argument("--frames", type=int, default=40, help="frames per animation")
    parser.add_argument("--difficulty", type=float, default=0.3, help="synthetic nuisance, 0-1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 2 <= args.classes <= MAX_CLASSES:
        parser.error(f"--classes must lie in [2, {MAX_CLASSES}], got {args.classes}")
    for name in ("images_per_class", "plot_images_per_class", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.wide_epochs < 0:
        parser.error(f"--wide-epochs must be 0 (skip) or more, got {args.wide_epochs}")
    if not 0.0 <= args.difficulty <= 1.0:
        parser.error(f"--difficulty must lie in [0, 1], got {args.difficulty}")
    most_frames = args.epochs * steps_per_epoch(args.classes * args.images_per_class) + 1
    if not 2 <= args.frames <= most_frames:
        parser.error(f"--frames must lie in [2, {most_frames}] (one per training step, plus the "
                     f"start), got {args.frames}")
    check_writable(args.out, "--out", folder=True, instead="choose a folder you can write")
    # The layers are too small to gain from a second thread, and on a shared machine the extra
    # threads mostly spin, so one thread is faster in wall time.
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    faces = SyntheticFaces(args.seed, args.difficulty)
    train_set = render_identities(faces, args.classes, 0, args.images_per_class)
    plot_set = render_identities(faces, args.classes, args.images_per_class, args.plot_images_per_class)
    plot_labels = plot_set[1].numpy()
    print(f"rendered {len(train_set[1])} + {len(plot_labels)} images "
          f"in {time.perf_counter() - started:.1f} s")
    runs = [(run, args.epochs, args.frames) for run in ANIMATED_RUNS]
    if args.wide_epochs > 0:
        runs += [(run, args.wide_epochs, 2) for run in WIDE_RUNS]
    trajectories = []
    for run, epochs, frames in runs:
        began = time.perf_counter()
        trajectory = train(run, train_set, plot_set, epochs, frames, args.seed)
        if run.embedding_size == 2:
            save_animation(trajectory, plot_labels, epochs, os.path.join(args.out, f"{run.name}.gif"))
        trajectories.append(trajectory)
        own, other = angles_to_centres(trajectory.features[-1], trajectory.head_weights[-1], plot_labels)
        print(f"{run.name}: {time.perf_counter() - began:.1f} s, held-out accuracy "
              f"{100 * trajectory.accuracies[-1]:.1f}%, mean angle to own centre {own.mean():.1f}°, "
              f"to nearest other {other.mean():.1f}°, intra/inter-class distance "
              f"{cluster_spread(trajectory.features[-1], plot_labels):.3f}")
    plot_theta_distributions(trajectories, plot_labels, os.path.join(args.out, "theta_distributions.png"))
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    run_cli(main)
