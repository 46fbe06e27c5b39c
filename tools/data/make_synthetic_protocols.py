"""Small synthetic stand-ins for the inputs of eval_blufr.py and of the DeepGlint tools, rendered
from held-out synthetic identities (dataset/synthetic.py), so that both protocols run end to end
without LFW or the DeepGlint test set.

    python tools/data/make_synthetic_protocols.py data/protocols_synthetic

OUT/lfw/Name/Name_0001.jpg: an LFW-like folder (each identity one to --max-images images, many with
one, as in LFW). OUT/blufr_lfw_config.mat: a BLUFR config in the release's layout (imageList, labels,
and 10 x 1 cells trainIndex, testIndex, galIndex, probIndex of 1-based indices): per trial, about a
quarter of the identities train and the rest test; the gallery is one image of about a quarter of
the test identities that have two or more, the probes are their other images (genuine) and every
image of the other test identities (impostors), as BLUFR splits LFW.

OUT/deepglint/elfw/<identity>/<n>.jpg and OUT/deepglint/delfw/<group>/<n>.jpg: probes of
--deepglint-identities identities and --distractors distractors; OUT/deepglint_labels.txt: one label
per image in the feature file's order (tools/model/deepglint_features.py), the identity or -1.
"""

import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset.synthetic import DEFAULT_DIFFICULTY, SyntheticFaces  # noqa: E402
from evaluation.blufr.config import write_blufr_config  # noqa: E402
from evaluation.deepglint.files import feature_order  # noqa: E402
from runtime import UsageError, check_writable, positive_int, run_cli  # noqa: E402

FIRST_IDENTITY = 20_000  # far above the training identities of make_synthetic.py's packs
TRIALS = 10


def write_image(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"could not write {path}")


def image_counts(rng, identities: int, max_images: int) -> np.ndarray:
    """LFW-like: most identities have one image, a few have many."""
    return np.minimum(max_images, np.where(rng.random(identities) < 0.55, 1, 1 + rng.geometric(0.4, identities)))


def plan_trials(rng, labels: np.ndarray) -> tuple[list, list, list, list]:
    """(train, test, gallery, probes) 0-based index vectors per trial, BLUFR's proportions."""
    identities = np.unique(labels)
    train, test, gallery, probes = [], [], [], []
    for _ in range(TRIALS):
        shuffled = rng.permutation(identities)
        n_train = max(1, len(identities) // 4)
        train_ids, test_ids = shuffled[:n_train], shuffled[n_train:]
        several = [identity for identity in test_ids if (labels == identity).sum() >= 2]
        gallery_ids = rng.permutation(several)[:max(1, len(several) // 4)]
        test_index = np.flatnonzero(np.isin(labels, test_ids))
        first = [int(rng.choice(np.flatnonzero(labels == identity))) for identity in gallery_ids]
        train.append(np.flatnonzero(np.isin(labels, train_ids)))
        test.append(test_index)
        gallery.append(np.sort(first))
        probes.append(np.setdiff1d(test_index, first))
    return train, test, gallery, probes


def write_blufr(out: str, faces: SyntheticFaces, rng, counts: np.ndarray) -> int:
    names, labels = [], []
    for offset, count in enumerate(counts):
        person = f"Synthetic_Person_{offset + 1:04d}"
        for index in range(count):
            names.append(f"{person}_{index + 1:04d}.jpg")
            labels.append(offset + 1)
            write_image(os.path.join(out, "lfw", person, names[-1]),
                        faces.render(FIRST_IDENTITY + offset, index, "lfw"))
    labels = np.array(labels)
    write_blufr_config(os.path.join(out, "blufr_lfw_config.mat"), names, labels, *plan_trials(rng, labels))
    return len(names)


def write_deepglint(out: str, faces: SyntheticFaces, identities: int, per_identity: int, distractors: int) -> int:
    labels = {}
    first = FIRST_IDENTITY + 10_000
    for identity in range(identities):
        for index in range(per_identity):
            relative = f"elfw/{identity:05d}/{index:03d}.jpg"
            labels[relative] = identity
            write_image(os.path.join(out, "deepglint", relative), faces.render(first + identity, index, "lfw"))
    for index in range(distractors):
        relative = f"delfw/{index % 7:02d}/{index:07d}.jpg"
        labels[relative] = -1
        write_image(os.path.join(out, "deepglint", relative), faces.render(first + identities + index, 0, "lfw"))
    with open(os.path.join(out, "deepglint_labels.txt"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{labels[path]}\n" for path in feature_order(labels))
    return len(labels)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT_DIR", help="folder to write (lfw/, blufr_lfw_config.mat, deepglint/, ...)")
    parser.add_argument("--blufr-identities", type=positive_int, default=80, help="LFW-like identities")
    parser.add_argument("--max-images", type=positive_int, default=6, help="images of an LFW-like identity at most")
    parser.add_argument("--deepglint-identities", type=positive_int, default=12, help="probe identities")
    parser.add_argument("--images-per-identity", type=int, default=4, help="probe images per identity (>= 2)")
    parser.add_argument("--distractors", type=positive_int, default=150, help="distractor images")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY, help="synthetic nuisance, 0 to 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images_per_identity < 2:
        parser.error("--images-per-identity must be at least 2: a probe identity needs a positive pair")
    if not 0.0 <= args.difficulty <= 1.0:
        parser.error(f"--difficulty must lie in [0, 1], got {args.difficulty}")
    check_writable(args.out, "OUT_DIR", folder=True, instead="choose a folder you can write")
    faces = SyntheticFaces(args.seed, args.difficulty)
    rng = np.random.default_rng([args.seed, 24])
    counts = image_counts(rng, args.blufr_identities, args.max_images)
    if (counts >= 2).sum() < 4:  # each trial's gallery needs test identities with a second image
        raise UsageError(f"--blufr-identities {args.blufr_identities} with --max-images {args.max_images} gives "
                         f"{(counts >= 2).sum()} identities with two images or more; BLUFR's trials need 4")
    n_lfw = write_blufr(args.out, faces, rng, counts)
    n_deepglint = write_deepglint(args.out, faces, args.deepglint_identities, args.images_per_identity,
                                  args.distractors)
    print(f"{args.out}/lfw: {n_lfw} images of {args.blufr_identities} identities; {args.out}/blufr_lfw_config.mat: "
          f"{TRIALS} trials")
    print(f"{args.out}/deepglint: {n_deepglint} images ({args.deepglint_identities} x {args.images_per_identity} "
          f"probes, {args.distractors} distractors); labels in {args.out}/deepglint_labels.txt")


if __name__ == "__main__":
    run_cli(main)
