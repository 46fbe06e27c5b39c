"""Feature-space animations and theta distributions: softmax vs softmax + center loss vs ArcFace.

Reproduces, from this repository's heads and synthetic faces, the two kinds of figure the old
README showed:

* ``softmax.gif``, ``softmax_center.gif``, ``arcface.gif``: a small CNN with a 2-D embedding
  (the visualisation of Wen et al., "A Discriminative Feature Learning Approach for Deep Face
  Recognition", ECCV 2016, Fig. 2-3, whose LeNets++ also ends in a 2-unit layer) is trained on a
  few synthetic identities three times from the same seed; each frame plots the embeddings of a
  fixed held-out set, coloured by identity, at one point of training.  Softmax and softmax +
  center loss frames show the raw 2-D features, the head's class directions (dashed) and, for the
  center loss, its learnt centres (crosses).  ArcFace (Deng et al., "ArcFace: Additive Angular
  Margin Loss for Deep Face Recognition", CVPR 2019, whose Fig. 1 draws the same 8-class 2-D toy)
  only sees directions, so its frames show the normalised features on the unit circle with the
  class-centre directions; its network ends in BatchNorm, as the paper's do (see ``SmallCNN``).
* ``theta_distributions.png``: for each run, a histogram of the angle between each held-out
  feature and its own class centre (the head's weight row), against the angle to the nearest
  other centre; a second row repeats softmax vs ArcFace with a 64-D embedding, where angles
  behave as in a real face model.

About two minutes on one CPU core at the defaults (the images are rendered once, in memory)::

    python tools/feature_space.py --out result/feature_space [--classes 8]
        [--images-per-class 150] [--plot-images-per-class 40] [--epochs 30]
        [--wide-epochs 15] [--frames 40] [--difficulty 0.3] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import cv2
import matplotlib

matplotlib.use("Agg")  # files only: no display on the training machines
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset import normalize_images  # noqa: E402
from dataset.synthetic import SyntheticFaces  # noqa: E402
from margin import build_aux_loss, build_margin  # noqa: E402
from runtime import l2_normalize  # noqa: E402

INPUT_SIZE = 48  # small enough to train in seconds; the traits that tell identities apart survive
MAX_CLASSES = 20  # distinct colours in matplotlib's tab20
BATCH_SIZE = 64
# Adam rather than SGD: a cosine head's gradients scale with 1/|x| and 1/|w|, and under SGD the
# 2-D ArcFace run (difficulty 0.5) inflated those lengths within a few steps and then stalled near
# 50% training accuracy; Adam's steps do not depend on the gradient's scale.  All runs share it.
LEARNING_RATE = 3e-3
# Adam turns a unit-length class centre by about its learning rate (in radians) per step.  At the
# trunk's rate the 2-D ArcFace centres barely left their random start and some stayed crowded;
# ten times faster they spread round the circle.
HEAD_LEARNING_RATE = 3e-2
# Wen et al. update each centre by alpha * (mean offset of its batch samples), alpha = 0.5.  With
# CenterLoss's batch mean, SGD at rate eta moves a centre by eta * n_j / B of that offset, and
# n_j / B is about 1 / num_classes for balanced batches, so eta = alpha * num_classes.
CENTER_ALPHA = 0.5
CENTER_WEIGHT = 0.1  # lambda: the top of Wen et al.'s 0.003-0.1 range, to make the effect plain
# ArcFace in 2-D: 8 centres are at best 45 degrees apart, and a feature theta from its own centre
# keeps the margin against a neighbour only while theta + m < 45 deg - theta.  m = 0.3 rad
# (17 deg) lets each class spread +-14 deg, room for held-out images; the paper's m = 0.5 for
# 512-d would leave +-8 deg.  s = 16: on its centre a feature's target logit s*cos(m) beats its
# two neighbours' s*cos(45 deg) by 4, so p_y can reach ~0.96 among 8 classes: large enough for
# a confident fit, and no larger, as the loss grows steeper with s.
ARCFACE_2D = {"s": 16.0, "m": 0.3}
ARCFACE_WIDE = {"s": 32.0, "m": 0.5}  # 64-d has room for the paper's margin
WIDE_EMBEDDING = 64


@dataclass(frozen=True)
class Run:
    """One training run: the file stem, a title for the plots, the head and its loss terms."""

    name: str
    title: str
    head: str
    hyper: dict
    center_weight: float = 0.0
    embedding_size: int = 2
    normalized_output: bool = False  # BatchNorm1d on the embedding, as ArcFace's models have


ANIMATED_RUNS = (
    Run("softmax", "Softmax", "softmax", {}),
    Run("softmax_center", f"Softmax + center loss (λ={CENTER_WEIGHT})", "softmax", {}, CENTER_WEIGHT),
    Run("arcface", f"ArcFace (s={ARCFACE_2D['s']:g}, m={ARCFACE_2D['m']:g})", "arcface", ARCFACE_2D,
        normalized_output=True),
)
WIDE_RUNS = (
    Run("softmax_64d", "Softmax", "softmax", {}, embedding_size=WIDE_EMBEDDING),
    Run("arcface_64d", f"ArcFace (s={ARCFACE_WIDE['s']:g}, m={ARCFACE_WIDE['m']:g})", "arcface",
        ARCFACE_WIDE, embedding_size=WIDE_EMBEDDING, normalized_output=True),
)


@dataclass
class Trajectory:
    """What a run recorded: at each frame the epoch, the held-out features ``[N, D]``, the head's
    class centres ``[C, D]``, the center-loss centres (or None) and the held-out accuracy."""

    run: Run
    epochs: list[float]
    features: list[np.ndarray]
    head_weights: list[np.ndarray]
    loss_centres: list[np.ndarray | None]
    accuracies: list[float]


def render_identities(faces: SyntheticFaces, num_classes: int, first_index: int, count: int,
                      input_size: int = INPUT_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``first_index .. first_index + count - 1`` of identities ``0 .. num_classes - 1``
    (training-style pose and age), downsampled and normalised: float [N, 3, s, s], int64 [N]."""
    images = [cv2.resize(faces.render(identity, first_index + i, "train"), (input_size, input_size),
                         interpolation=cv2.INTER_AREA)
              for identity in range(num_classes) for i in range(count)]
    labels = torch.arange(num_classes).repeat_interleave(count)
    return normalize_images(np.stack(images)), labels


class SmallCNN(nn.Module):
    """Three conv-BN-PReLU-maxpool blocks and a linear embedding, in the spirit of LeNets++.

    ``normalized_output`` adds a BatchNorm1d after the embedding, as ArcFace's networks end
    ("BN-Dropout-FC-BN", Deng et al., Sec. 4.1).  A cosine head needs it here: the trunk's
    activations are mostly positive, so without it every image starts in one narrow cone of
    directions, the other classes' features push each centre out of that cone, and the 2-D
    ArcFace run can end with centres opposite their features.
    The softmax runs keep Wen et al.'s plain output, whose free feature length is what the
    center loss reins in.
    """

    def __init__(self, embedding_size: int, normalized_output: bool = False,
                 input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        layers, channels = [], (3, 8, 16, 32)
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.PReLU(c_out), nn.MaxPool2d(2)]
        # No pooling over space: where a trait sits on the face is part of the identity.
        embedding = nn.Linear(channels[-1] * (input_size // 8) ** 2, embedding_size)
        output = [nn.BatchNorm1d(embedding_size)] if normalized_output else []
        self.layers = nn.Sequential(*layers, nn.Flatten(), embedding, *output)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def class_scores(head_name: str, features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """What a head ranks classes by at test time: the inner product for softmax, else the cosine."""
    if head_name == "softmax":
        return features @ weight.T
    return l2_normalize(features) @ l2_normalize(weight).T


def frame_steps(total_steps: int, frames: int) -> list[int]:
    """``frames`` distinct steps from 0 (before training) to ``total_steps``, spaced quadratically:
    the clusters form in the first few epochs, so that is where most frames go."""
    extra = total_steps - (frames - 1)
    return [k + round(extra * (k / (frames - 1)) ** 2) for k in range(frames)]


def steps_per_epoch(num_images: int, batch_size: int = BATCH_SIZE) -> int:
    return math.ceil(num_images / batch_size)


def train(run: Run, train_set: tuple[torch.Tensor, torch.Tensor],
          plot_set: tuple[torch.Tensor, torch.Tensor], epochs: int, frames: int, seed: int,
          batch_size: int = BATCH_SIZE) -> Trajectory:
    """Trains ``SmallCNN`` + the run's head from ``seed`` with Adam and a cosine learning-rate decay,
    recording the held-out features at ``frames`` steps (see ``frame_steps``)."""
    images, labels = train_set
    num_classes = int(labels.max()) + 1
    epoch_steps = steps_per_epoch(len(labels), batch_size)
    total_steps = epochs * epoch_steps
    if not 2 <= frames <= total_steps + 1:
        raise ValueError(f"frames must lie in [2, {total_steps + 1}] for {epochs} epoch(s) of "
                         f"{epoch_steps} step(s), got {frames}")
    torch.manual_seed(seed)
    model = SmallCNN(run.embedding_size, run.normalized_output, images.shape[-1])
    head = build_margin(run.head, run.embedding_size, num_classes, **run.hyper)
    if run.head != "softmax":
        # The default std-0.01 rows are ~0.01 long in 2-D, and Adam moves each weight by about
        # the learning rate per step whatever its size: they would spin round erratically.
        # Only directions matter to these heads, so start from unit rows.
        with torch.no_grad():
            head.weight.copy_(F.normalize(head.weight, dim=1))
    optimizer = torch.optim.Adam([{"params": model.parameters()},
                                  {"params": head.parameters(), "lr": HEAD_LEARNING_RATE}],
                                 lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
    center_loss = center_optimizer = None
    if run.center_weight:
        center_loss = build_aux_loss("center", num_classes, run.embedding_size)
        center_optimizer = torch.optim.SGD(center_loss.parameters(), lr=CENTER_ALPHA * num_classes)
    record_steps = set(frame_steps(total_steps, frames))
    trajectory = Trajectory(run, [], [], [], [], [])

    def record(step: int) -> None:
        model.eval()
        with torch.no_grad():
            features = model(plot_set[0]).numpy()
        model.train()
        weight = head.weight.detach().numpy().copy()
        predicted = class_scores(run.head, features, weight).argmax(axis=1)
        trajectory.epochs.append(step / epoch_steps)
        trajectory.features.append(features)
        trajectory.head_weights.append(weight)
        trajectory.loss_centres.append(None if center_loss is None
                                       else center_loss.centers.detach().numpy().copy())
        trajectory.accuracies.append(float((predicted == plot_set[1].numpy()).mean()))

    shuffle = torch.Generator().manual_seed(seed)
    record(0)
    step = 0
    for _ in range(epochs):
        # Near-equal batches rather than a short last one: a batch of one would break BatchNorm.
        for batch in torch.randperm(len(labels), generator=shuffle).tensor_split(epoch_steps):
            embeddings = model(images[batch])
            loss = F.cross_entropy(head(embeddings, labels[batch]), labels[batch])
            if center_loss is not None:
                loss = loss + run.center_weight * center_loss(embeddings, labels[batch])
            optimizer.zero_grad()
            if center_optimizer is not None:
                center_optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if center_optimizer is not None:
                # Wen et al.'s centre update does not depend on lambda: undo its factor.
                center_loss.centers.grad.div_(run.center_weight)
                center_optimizer.step()
            step += 1
            if step in record_steps:
                record(step)
    return trajectory


def angles_to_centres(features: np.ndarray, weight: np.ndarray, labels: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Degrees between each feature and its own class centre, and its nearest other centre."""
    angles = np.degrees(np.arccos((l2_normalize(features) @ l2_normalize(weight).T).clip(-1.0, 1.0)))
    rows = np.arange(len(labels))
    own = angles[rows, labels]
    angles[rows, labels] = np.inf
    return own, angles.min(axis=1)


def cluster_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of a feature to its class mean over the mean distance between class means:
    the intra- to inter-class ratio that the center loss is meant to shrink."""
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    within = np.linalg.norm(features - means[np.searchsorted(classes, labels)], axis=1).mean()
    first, second = np.triu_indices(len(classes), 1)
    between = np.linalg.norm(means[first] - means[second], axis=1).mean()
    return float(within / between)


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
    parser.add_argument("--out", required=True, help="output folder (the README's figures: result/feature_space)")
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
    main()
