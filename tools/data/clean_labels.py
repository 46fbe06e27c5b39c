"""List the training images whose label looks wrong: those far from their class's dominant sub-centre.

    python tools/data/clean_labels.py runs/noisy40_subcenter data/noisy40 --flips data/noisy40/label_flips.tsv

Sub-center ArcFace's data cleaning (Deng et al., ECCV 2020, Sec. 3.2): with the run's backbone, every
training image is embedded (its feature plus its mirror's, as the protocols embed); each class keeps
its dominant sub-centre, the one nearest to most of its images (margin.subcenter.dominant_subcentres);
an image more than --max-angle degrees (the paper's 75) from its label's dominant sub-centre is listed
as suspect. Any cosine head works: a plain head's class centre is its only sub-centre.

RUN_DIR is a train.py run folder (its checkpoint.pt holds the head, its backbone.pt the network);
DATA the training source it was trained on (a pack, image folder or list). The list goes to
--out (default RUN_DIR/suspect_labels.tsv): `key<TAB>label<TAB>angle`, farthest first (key: the
image's index + 1, the record key of a pack). --centres F.npy also writes the dominant sub-centres
[C, D], the head reduced to one centre per class. With --flips (make_synthetic.py --label-noise's
record), the precision and recall of the list against the flips it knows are printed as well.
The last line of stdout is one JSON object with the counts (and precision, recall).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import open_training_set  # noqa: E402
from dataset.image_sequence import ImageSequence  # noqa: E402
from dataset.label_noise import read_flips  # noqa: E402
from evaluation.features import extract_embeddings  # noqa: E402
from evaluation.model_loading import load_backbone  # noqa: E402
from margin import angles_to_dominant  # noqa: E402
from runtime import DataFormatError, UsageError, atomic_file, check_writable, positive_int, run_cli  # noqa: E402
from training.checkpoint import BACKBONE, LATEST, read_checkpoint  # noqa: E402

PAPER_MAX_ANGLE = 75.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="train.py run folder (checkpoint.pt and backbone.pt)")
    parser.add_argument("data", help="the training source: .rec/.idx pack, image folder or list")
    parser.add_argument("--out", help="suspect list (default RUN_DIR/suspect_labels.tsv)")
    parser.add_argument("--max-angle", type=float, default=PAPER_MAX_ANGLE,
                        help=f"degrees from the dominant sub-centre beyond which an image is suspect (default "
                             f"{PAPER_MAX_ANGLE:g}, the paper's)")
    parser.add_argument("--flips", help="label_flips.tsv of make_synthetic.py --label-noise: report precision and recall")
    parser.add_argument("--centres", help="also write the dominant sub-centres [C, D] float32 to this .npy")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    args = parser.parse_args(argv)
    if not 0.0 < args.max_angle < 180.0:
        raise UsageError(f"--max-angle must lie in (0, 180) degrees, got {args.max_angle:g}")
    args.out = args.out or os.path.join(args.run_dir, "suspect_labels.tsv")
    check_writable(args.out, "--out", instead="choose a file in a folder you can write")
    if args.centres:
        check_writable(args.centres, "--centres", instead="choose a file in a folder you can write")
    for path, what in ((os.path.join(args.run_dir, LATEST), "checkpoint"), (os.path.join(args.run_dir, BACKBONE), "backbone")):
        if not os.path.isfile(path):
            raise DataFormatError(path, f"{what} file not found: RUN_DIR must be a train.py run folder")
    if args.flips and not os.path.isfile(args.flips):
        raise DataFormatError(args.flips, "flips file not found (make_synthetic.py --label-noise writes label_flips.tsv)")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    flips = read_flips(args.flips) if args.flips else None
    head_weight = read_checkpoint(os.path.join(args.run_dir, LATEST))["head"].get("weight")
    if head_weight is None or head_weight.dim() not in (2, 3):
        raise DataFormatError(os.path.join(args.run_dir, LATEST), "its head has no class-centre weight [C, D] or "
                                                                  "[C, K, D]: the run's head is not a cosine head")
    backbone, _, embedding_size = load_backbone(os.path.join(args.run_dir, BACKBONE))
    if head_weight.shape[-1] != embedding_size:
        raise DataFormatError(args.run_dir, f"the head's centres have {head_weight.shape[-1]} dimensions, "
                                            f"the backbone's embeddings {embedding_size}")
    source = open_training_set(args.data)
    labels = source.labels()
    if len(labels) and labels.max() >= head_weight.shape[0]:
        raise DataFormatError(args.data, f"labels reach {labels.max()}, the run's head has {head_weight.shape[0]} "
                                         "classes: DATA is not the source the run trained on")
    images = ImageSequence(range(len(source)), lambda index: source[index][0])
    embeddings, mirrored = extract_embeddings(backbone, images, args.batch_size, description="training images")
    features = torch.from_numpy(embeddings + mirrored)
    label_tensor = torch.from_numpy(labels)
    weight = head_weight.detach().float()
    angles, centres = angles_to_dominant(weight, features, label_tensor)
    angles = angles.numpy()
    suspect = np.flatnonzero(angles > args.max_angle)
    suspect = suspect[np.argsort(-angles[suspect], kind="stable")]
    with atomic_file(args.out, "w") as handle:
        handle.write("key\tlabel\tangle\n")
        handle.writelines(f"{index + 1}\t{labels[index]}\t{angles[index]:.2f}\n" for index in suspect)
    if args.centres:
        with atomic_file(args.centres) as handle:
            np.save(handle, centres.numpy().astype(np.float32))
    result = {"images": int(len(labels)), "suspect": int(len(suspect)), "max_angle": args.max_angle,
              "sub_centres": int(weight.shape[1]) if weight.dim() == 3 else 1}
    print(f"{len(suspect)} of {len(labels)} images lie more than {args.max_angle:g} degrees from their class's "
          f"dominant sub-centre -> {args.out}")
    if flips is not None:
        listed = set((suspect + 1).tolist())
        found = len(listed & set(flips))
        result.update(flipped=len(flips), found=found, precision=found / len(listed) if listed else 0.0,
                      recall=found / len(flips) if flips else 0.0)
        print(f"against {args.flips}: {found} of the {len(flips)} flipped labels listed; precision "
              f"{result['precision']:.3f}, recall {result['recall']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    run_cli(main)
