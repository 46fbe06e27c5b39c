"""A synthetic IJB-B / IJB-C release tree, in the layout of insightface's IJB_release (read by
evaluation/ijb/meta.py), with loose crops rendered from synthetic identities so that eval_ijb.py
runs end to end on it.

Each subject has one gallery template (stills, sometimes a video of several frames) in the first
or the second gallery, and probe templates of every shape IJB has: one still, one video, stills
and a video together. Unenrolled subjects have probe templates only (non-mated in both galleries),
and one probe template repeats another's images under another subject, so that genuine and
impostor scores tie exactly. The pair list holds every gallery x probe template pair. Image rows
are shuffled (the references pool in file order, not in template order), and each loose crop is
the rendered face scaled, turned and placed into a larger canvas, with its 5 landmarks carried
along; landmarks and faceness are written with three decimals, as in the real files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from runtime.errors import UnknownName

from .image_codec import encode_image
from .synthetic import DEFAULT_DIFFICULTY, SyntheticFaces

GALLERY_NAMES = {"ijbc": ("G1", "G2"), "ijbb": ("S1", "S2")}
# (stills, video frames) of each probe template, in turn
_PROBE_SHAPES = ((1, 0), (0, 3), (2, 2), (2, 0), (0, 2))


@dataclass(frozen=True, eq=False)
class SyntheticIJB:
    """What was written: per image row (in file order) its name, template, media, subject and the
    render index of its face; per template its subject; the pairs; the 1:N lists."""

    names: list
    templates: np.ndarray
    medias: np.ndarray
    subjects: np.ndarray
    render_index: np.ndarray
    template_subject: dict
    pairs: np.ndarray      # int64 [P, 2] template ids
    labels: np.ndarray     # bool [P]
    galleries: dict        # {name: template ids}
    probes: np.ndarray     # template ids


def plan_synthetic_ijb(subjects: int = 6, probes_per_subject: int = 2, unenrolled_subjects: int = 1,
                       seed: int = 0) -> SyntheticIJB:
    if subjects < 4 or probes_per_subject < 1 or unenrolled_subjects < 0:
        raise ValueError(f"need subjects >= 4 (two per gallery), probes_per_subject >= 1, unenrolled_subjects >= 0; "
                         f"got {subjects}, {probes_per_subject}, {unenrolled_subjects}")
    rng = np.random.default_rng([seed, 13])
    rows = []  # (template, media, subject, render index)
    media_ids = iter(rng.permutation(np.arange(100, 100 + 40 * (subjects + unenrolled_subjects) * (probes_per_subject + 2))))
    template_ids = iter(rng.permutation(np.arange(1, 1 + 20 * (subjects + unenrolled_subjects) * (probes_per_subject + 2))))
    template_subject, renders = {}, iter(range(10 ** 6))

    def add_template(subject, stills, frames):
        template = int(next(template_ids))
        template_subject[template] = subject
        for _ in range(stills):
            rows.append((template, int(next(media_ids)), subject, next(renders)))
        if frames:
            media = int(next(media_ids))
            rows.extend((template, media, subject, next(renders)) for _ in range(frames))
        return template

    gallery_of = {}
    for subject in range(subjects):
        gallery_of[subject] = add_template(subject, int(rng.integers(1, 4)), int(rng.choice([0, 0, 3])))
    probes, shape = [], 0
    for subject in range(subjects + unenrolled_subjects):
        for _ in range(probes_per_subject):
            probes.append(add_template(subject, *_PROBE_SHAPES[shape % len(_PROBE_SHAPES)]))
            shape += 1
    # the same images as the first multi-image probe, under the next subject: exact score ties
    source = next(t for t in probes if sum(row[0] == t for row in rows) > 1)
    copy = int(next(template_ids))
    template_subject[copy] = (template_subject[source] + 1) % subjects
    rows.extend((copy, media, template_subject[copy], render) for template, media, _, render in list(rows)
                if template == source)
    probes.append(copy)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    templates, medias, row_subjects, render_index = (np.array(column, dtype=np.int64) for column in zip(*rows))
    names = [f"{render}.jpg" for render in render_index]
    half = subjects // 2
    galleries = (np.array(sorted(gallery_of[s] for s in range(half))),
                 np.array(sorted(gallery_of[s] for s in range(half, subjects))))
    pairs = np.array([(g, p) for g in sorted(gallery_of.values()) for p in probes], dtype=np.int64)
    labels = np.array([template_subject[g] == template_subject[p] for g, p in pairs])
    return SyntheticIJB(names, templates, medias, row_subjects, render_index, template_subject, pairs, labels,
                        {"first": galleries[0], "second": galleries[1]}, np.array(probes))


def loose_crop(face: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(a larger canvas holding `face` scaled, turned and moved, the 5 points carried along)."""
    height, width = (int(size) for size in rng.integers(150, 230, 2))
    scale, angle = rng.uniform(1.1, 1.7), rng.uniform(-20, 20)
    warp = cv2.getRotationMatrix2D((56.0, 56.0), angle, scale)
    margin = 40 * scale
    warp[:, 2] += (rng.uniform(margin, width - margin) - 56.0, rng.uniform(margin, height - margin) - 56.0)
    background = tuple(float(value) for value in rng.uniform(0, 255, 3))
    canvas = cv2.warpAffine(face, warp, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=background)
    return canvas, points @ warp[:, :2].T + warp[:, 2]


def write_synthetic_ijb(root, set_name: str = "ijbc", subjects: int = 6, probes_per_subject: int = 2,
                        unenrolled_subjects: int = 1, seed: int = 0, difficulty: float = DEFAULT_DIFFICULTY,
                        images: bool = True) -> SyntheticIJB:
    """Write ROOT/meta/* and (with `images`) ROOT/loose_crop/*.jpg; returns the plan."""
    if set_name not in GALLERY_NAMES:
        raise UnknownName("IJB set", set_name, GALLERY_NAMES)
    plan = plan_synthetic_ijb(subjects, probes_per_subject, unenrolled_subjects, seed)
    meta, crops = os.path.join(root, "meta"), os.path.join(root, "loose_crop")
    os.makedirs(meta, exist_ok=True)
    rng = np.random.default_rng([seed, 14])
    faces = SyntheticFaces(seed, difficulty)
    landmark_lines, written = [], {}
    for name, subject, render in zip(plan.names, plan.subjects, plan.render_index):
        if name not in written:  # a repeated image (the copied template) is one file
            face, points = faces.render_with_landmarks(int(subject), int(render), "train")
            crop, points = loose_crop(face, points, rng)
            written[name] = (crop, points, rng.uniform(0.1, 1.0))
        crop, points, faceness = written[name]
        landmark_lines.append(" ".join([name, *(f"{value:.3f}" for value in points.ravel()), f"{faceness:.3f}"]))
    if images:
        os.makedirs(crops, exist_ok=True)
        for name, (crop, _, _) in written.items():
            with open(os.path.join(crops, name), "wb") as handle:
                handle.write(encode_image(crop, quality=95))

    def write(filename, lines):
        with open(os.path.join(meta, filename), "w", encoding="utf-8") as handle:
            handle.writelines(f"{line}\n" for line in lines)

    write(f"{set_name}_face_tid_mid.txt", (f"{n} {t} {m}" for n, t, m in zip(plan.names, plan.templates, plan.medias)))
    write(f"{set_name}_name_5pts_score.txt", landmark_lines)
    write(f"{set_name}_template_pair_label.txt", (f"{a} {b} {int(y)}" for (a, b), y in zip(plan.pairs, plan.labels)))

    def one_to_n_rows(template_ids):
        for template in template_ids:
            for row in np.flatnonzero(plan.templates == template):
                yield f"{template},{plan.template_subject[int(template)]},{plan.names[row]}"

    header = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
    for name, template_ids in zip(GALLERY_NAMES[set_name], plan.galleries.values()):
        write(f"{set_name}_1N_gallery_{name}.csv", header + list(one_to_n_rows(template_ids)))
    write(f"{set_name}_1N_probe_mixed.csv", header + list(one_to_n_rows(plan.probes)))
    return plan
