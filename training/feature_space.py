"""The feature-space experiment behind tools/model/feature_space.py's figures: a small CNN with a 2-D
(or 64-D) embedding trained on a few synthetic identities with softmax, softmax + center loss or
ArcFace, recording the held-out features as training goes, and the geometry read off them.

The visualisation is Wen et al.'s ("A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016, Fig. 2-3, whose LeNets++ also ends in a 2-unit layer) and Deng et al.'s
("ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019, Fig. 1, the same
8-class 2-D toy). Every run trains from the same seed; the heads and the center loss are this
repository's own (margin.build_margin, margin.build_aux_loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dataset import normalize_images
from dataset.synthetic import SyntheticFaces
from margin import build_aux_loss, build_margin
from runtime import l2_normalize

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
