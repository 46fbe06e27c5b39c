"""The MegaFace noise lists behind insightface's refined "@R" numbers (ArcFace, Deng et al., CVPR
2019, section 4.1: mislabelled FaceScrub probes and MegaFace distractors that show a FaceScrub
identity), applied as insightface's ``recognition/_evaluation_/megaface/remove_noises.py`` does, on
arrays and name lists instead of per-image feature files.

``facescrub_noises.txt``: one image file name a line ('#' lines are comments). insightface matches
the name against the last component of each FaceScrub image path; a noisy probe's feature becomes the
SUM of the clean probe features of its identity plus uniform noise in [-0.001, 0.001) on every
dimension, L2-normalised (float32). insightface draws that noise from NumPy's unseeded global
generator; here it comes from ``numpy.random.default_rng(seed)``, one draw per noisy probe in probe
order, so a run is reproducible.

``megaface_noises.txt``: one distractor a line, either "dir1/dir2/file" or "<anything>\\tdir1/dir2/file"
('#' lines are comments), matched against the last three components of each distractor path.
insightface appends a 513th coordinate to every feature, 0 for clean ones and 100 for noisy
distractors, which puts a noisy distractor at L2 distance >= 100 from every unit-norm probe: it stays
in the distractor set and in the impostor count but is never nearer than anything. The equivalent here
is the mask for ``megaface.evaluate_megaface(excluded_distractors=...)``, whose scores for those
distractors are -inf.

Blank lines are skipped (insightface would add an empty name, which matches nothing).
read_facescrub_noises/read_megaface_noises read the files; the parse_* functions take their lines.
"""

from __future__ import annotations

import os

import numpy as np

from dataset import read_text_lines
from runtime import l2_normalize


def parse_facescrub_noises(lines) -> set:
    """The image file names of a facescrub_noises.txt given as an iterable of lines."""
    return {line.strip() for line in lines if not line.startswith("#") and line.strip()}


def parse_megaface_noises(lines) -> set:
    """The 'dir1/dir2/file' keys of a megaface_noises.txt given as an iterable of lines."""
    keys = set()
    for line in lines:
        if line.startswith("#") or not line.strip():
            continue
        fields = line.strip().split("\t")
        keys.add(fields[1] if len(fields) > 1 else fields[0])
    return keys


def read_facescrub_noises(path) -> set:
    """The image file names of a facescrub_noises.txt file."""
    return parse_facescrub_noises(read_text_lines(path, "noise list"))


def read_megaface_noises(path) -> set:
    """The 'dir1/dir2/file' keys of a megaface_noises.txt file."""
    return parse_megaface_noises(read_text_lines(path, "noise list"))


def _path_parts(name: str) -> list:
    return name.replace(os.sep, "/").split("/")


def facescrub_noise_mask(probe_names, noisy_names) -> np.ndarray:
    """bool [P]: probes whose image file name (last path component) is on the noise list."""
    noisy_names = set(noisy_names)
    return np.array([_path_parts(name)[-1] in noisy_names for name in probe_names], dtype=bool)


def megaface_noise_mask(distractor_names, noisy_keys) -> np.ndarray:
    """bool [M]: distractors whose last three path components are on the noise list."""
    noisy_keys = set(noisy_keys)
    return np.array(["/".join(_path_parts(name)[-3:]) in noisy_keys for name in distractor_names], dtype=bool)


def clean_facescrub_probes(probe_embeddings, probe_labels, noisy_mask, seed: int = 0) -> np.ndarray:
    """A float32 copy of the probe features with every noisy probe replaced by
    normalise(sum of its identity's clean probe features + U[-0.001, 0.001)^D)."""
    features = np.array(probe_embeddings, dtype=np.float32)
    labels = np.asarray(probe_labels).reshape(-1)
    noisy_mask = np.asarray(noisy_mask, dtype=bool).reshape(-1)
    if features.ndim != 2 or not features.shape[0] == labels.size == noisy_mask.size:
        raise ValueError(f"probe features {features.shape}, labels ({labels.size},) and noisy_mask "
                         f"({noisy_mask.size},) must describe the same probes")
    centres = {}
    for feature, label, noisy in zip(features, labels, noisy_mask):
        if not noisy:
            # insightface accumulates in float32, in list order
            centres[label] = centres.get(label, np.zeros(features.shape[1], np.float32)) + feature
    rng = np.random.default_rng(seed)
    cleaned = features.copy()
    for row in np.nonzero(noisy_mask)[0]:
        label = labels[row]
        if label not in centres:
            raise ValueError(f"identity {label.item()!r} has no clean probe left to stand in for its "
                             f"noisy probe {row}")
        replacement = centres[label] + rng.uniform(-0.001, 0.001, features.shape[1]).astype(np.float32)
        cleaned[row] = l2_normalize(replacement[np.newaxis])[0]
    return cleaned
