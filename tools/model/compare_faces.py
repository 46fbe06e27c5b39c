"""Same person? Detect, align and embed the faces of two photos with a trained backbone, and compare.

    python tools/model/compare_faces.py a.jpg b.jpg --checkpoint runs/NAME/backbone.pt --threshold 0.3
    python tools/model/compare_faces.py a.jpg b.jpg --checkpoint runs/NAME/backbone.pt --threshold-from data/lfw.bin
    python tools/model/compare_faces.py --pairs pairs.txt --checkpoint runs/NAME/backbone.pt --threshold 0.3 --json

Each photo's face is found with MTCNN and aligned to 112x112 (as tools/data/align_faces.py does), then
embedded as the verification protocols embed: feature = f(x) + f(mirrored x), L2-normalised. The
cosine of the two features is compared with a threshold, either given (--threshold, a cosine) or
chosen by the insightface protocol on a verification .bin embedded with the same checkpoint
(--threshold-from): that protocol picks a squared-L2 distance d between normalised features per
fold; the mean over the folds is used, as the cosine 1 - d/2 (|a - b|^2 = 2 - 2 cos for unit
vectors). The output says which threshold was used and where it came from.

Every input is checked before the first photo is detected: each photo is a file (a missing one is
an error naming it and its line of the pairs list), the checkpoint loads, the --threshold-from .bin
reads. A photo with several faces uses the largest (a note on stderr names the count); --face N takes
the N-th by detection score instead (0 = the best), --face 1,largest chooses per photo. A photo with
no face is an error naming it; in a pairs list that pair's line says so, the others are compared,
and the exit status is 1. A pairs list holds `left right` or `left right flag` lines (flag 1 same
person, 0 or -1 not; paths relative to --root, default the list's folder).
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import align_face  # noqa: E402
from dataset.detect import detect_faces, largest_face  # noqa: E402
from dataset.image_codec import read_image_file  # noqa: E402
from dataset.verification_bin import open_bin  # noqa: E402
from evaluation.features import extract_embeddings  # noqa: E402
from evaluation.model_loading import load_backbone  # noqa: E402
from evaluation.verification import evaluate_verification  # noqa: E402
from runtime import DataFormatError, UserError, l2_normalize, positive_int, resolve_device, run_cli  # noqa: E402

CROP_SIZE = 112
FOLDS = 10  # the insightface protocol's


class NoFaceError(DataFormatError):
    """A photo where the face asked for is not there."""


# ============ inputs ============

def read_pairs(path, root=None) -> list[tuple[str, str, bool | None, str]]:
    """(left, right, same or None, where it is listed) of a `left right [flag]` list; paths joined to `root`."""
    root = os.path.dirname(os.path.abspath(path)) if root is None else root
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as error:
        raise DataFormatError(path, f"cannot read the pairs list ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise DataFormatError(path, f"not a UTF-8 text list ({error.reason} at byte {error.start})") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in ("1", "0", "-1")):
            raise DataFormatError(path, f"expected 'left right' or 'left right flag' (flag 1, 0 or -1), "
                                        f"got {line.strip()!r}", f"line {number}")
        same = None if len(fields) == 2 else fields[2] == "1"
        pairs.append((os.path.join(root, fields[0]), os.path.join(root, fields[1]), same, f"{path}, line {number}"))
    if not pairs:
        raise DataFormatError(path, "the pairs list holds no pair")
    return pairs


def check_photos(pairs) -> None:
    """Every photo is a file, before the first one is detected; else one line naming it (and the
    line of the pairs list that names it) and how many are missing."""
    missing = [(photo, where) for left, right, _, where in pairs for photo in (left, right) if not os.path.isfile(photo)]
    if missing:
        photo, where = missing[0]
        count = len({photo for photo, _ in missing})
        raise DataFormatError(photo, f"photo not found{f' (listed in {where})' if where else ''}"
                                     f"{f'; {count} photos are missing' if count > 1 else ''}")


def parse_face_choice(text: str) -> tuple:
    """--face: 'largest' or N for every photo, or two of them, comma-separated, for the left and the right."""
    choices = text.split(",")
    if len(choices) > 2 or not all(c == "largest" or c.isdigit() for c in choices):
        raise argparse.ArgumentTypeError(f"must be 'largest' or a face index 0, 1, ... (by score), or two of those "
                                         f"comma-separated (left,right), got {text!r}")
    return tuple(c if c == "largest" else int(c) for c in choices)


# ============ faces ============

def face_crop(path: str, choice, min_face_size: float, device) -> tuple[np.ndarray, dict]:
    """(the aligned 112x112 crop of the chosen face, what was found) of one photo."""
    image = read_image_file(path)
    boxes, scores, landmarks = detect_faces(image, min_face_size=min_face_size, device=device)
    if not len(boxes):
        raise NoFaceError(path, f"no face found (smallest face searched for: {min_face_size:g} px, "
                                "see --min-face-size)")
    if choice == "largest":
        index = largest_face(boxes)
    elif choice < len(boxes):
        index = choice
    else:
        raise NoFaceError(path, f"--face {choice}, but {len(boxes)} face{'s' * (len(boxes) > 1)} found "
                                f"(valid: largest, 0..{len(boxes) - 1})")
    if len(boxes) > 1:
        by = "the largest" if choice == "largest" else f"face {index} by score"
        print(f"note: {path}: {len(boxes)} faces found; using {by} (box {np.round(boxes[index]).astype(int).tolist()}, "
              f"score {scores[index]:.3f}); choose another with --face N (0..{len(boxes) - 1}, by score)",
              file=sys.stderr)
    found = {"faces": len(boxes), "face": index, "box": [round(float(v), 1) for v in boxes[index]],
             "score": round(float(scores[index]), 6)}
    return align_face(image, landmarks[index], CROP_SIZE), found


def features(model, crops: np.ndarray, device) -> np.ndarray:
    """Unit features f(x) + f(mirror x) of uint8 crops [N, 112, 112, 3], as the protocols compute them."""
    embeddings, mirrored = extract_embeddings(model, crops, batch_size=64, device=device, flip=True, progress=False)
    return l2_normalize(embeddings.astype(np.float64) + mirrored)


# ============ the threshold ============

def open_threshold_bin(path):
    """(images, issame) of the --threshold-from .bin, read and checked before any photo is detected."""
    images, issame = open_bin(path)
    if issame.size < FOLDS:
        raise DataFormatError(path, f"only {issame.size} pairs: the insightface protocol's {FOLDS} folds need at "
                                    f"least {FOLDS}")
    return images, issame


def threshold_from_bin(model, path, images, issame, device) -> tuple[float, str]:
    """(cosine threshold, where it came from) by the insightface protocol on a verification .bin."""
    embeddings, mirrored = extract_embeddings(model, images, device=device, flip=True,
                                              description=f"embedding {os.path.basename(path)}")
    result = evaluate_verification(embeddings, issame, mirrored, protocol="insightface")
    if result.threshold_kind != "squared_l2_distance":
        raise UserError(f"{path}: the protocol returned {result.threshold_kind!r} thresholds, expected squared-L2")
    distance = float(np.mean(result.thresholds))
    cosine = 1.0 - distance / 2.0
    source = (f"insightface protocol on {path} ({len(issame)} pairs, accuracy {result.accuracy_mean:.4f}): "
              f"mean squared-L2 threshold {distance:.4f} over {len(result.thresholds)} folds, "
              f"as cosine 1 - d/2")
    return cosine, source


# ============ main ============

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="*", help="two photos (or use --pairs)")
    parser.add_argument("--pairs", help="a list of `left right [flag]` lines")
    parser.add_argument("--root", help="folder the --pairs paths are relative to (default: the list's folder)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint.pt or backbone.pt of a train.py run")
    parser.add_argument("--backbone", help="network name, for a plain state_dict checkpoint")
    parser.add_argument("--embedding-size", type=positive_int, help="embedding size, for a plain state_dict checkpoint")
    threshold = parser.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--threshold", type=float, help="cosine similarity above which it is one person")
    threshold.add_argument("--threshold-from", metavar="BIN",
                           help="a verification .bin: the insightface protocol's threshold for this checkpoint")
    parser.add_argument("--face", type=parse_face_choice, default=("largest",),
                        help="which face of a photo with several: largest (default) or N, the N-th by score; "
                             "LEFT,RIGHT to choose for each photo of a pair")
    parser.add_argument("--min-face-size", type=float, default=20.0, help="smallest face searched for, px")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if bool(args.pairs) == bool(args.photos) or (args.photos and len(args.photos) != 2):
        parser.error("give two photos, or --pairs LIST")
    if args.root and not args.pairs:
        parser.error("--root applies to --pairs only")
    if args.threshold is not None and not -1 <= args.threshold <= 1:
        parser.error(f"--threshold {args.threshold}: a cosine similarity lies in [-1, 1]")
    if not args.min_face_size > 0:
        parser.error(f"--min-face-size {args.min_face_size}: must be a positive number of pixels")
    return args


def find_faces(args, pairs, device) -> tuple[list[dict], dict]:
    """(one result per pair, in order; the aligned crop of each (photo, choice)). A pair whose photo
    shows no (such) face gets an error instead; with a single pair that error ends the run."""
    crops, seen, results = {}, {}, []
    for left, right, same, _ in pairs:
        result = {"a": left, "b": right}
        if same is not None:
            result["expected_same"] = same
        try:
            for side, path, choice in (("a", left, args.face[0]), ("b", right, args.face[-1])):
                if (path, choice) not in crops:
                    crops[path, choice], seen[path, choice] = face_crop(path, choice, args.min_face_size, device)
                result[f"face_{side}"] = seen[path, choice]
                result[f"key_{side}"] = (path, choice)
        except DataFormatError as error:
            if len(pairs) == 1:
                raise
            result = {**result, "error": str(error)}
        results.append(result)
    return results, crops


def score(results: list[dict], crops: dict, model, device, threshold: float) -> None:
    """Add the cosine and the verdict to every result that has both faces."""
    keys = list(crops)
    unit = dict(zip(keys, features(model, np.stack([crops[k] for k in keys]), device))) if keys else {}
    for result in results:
        key_a, key_b = result.pop("key_a", None), result.pop("key_b", None)
        if "error" not in result:
            result["cosine"] = float(unit[key_a] @ unit[key_b])
            result["same"] = result["cosine"] > threshold  # strict, as the protocol accepts dist < t


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    # every input first -- the photos are files, the checkpoint loads, the .bin reads -- then the detection
    pairs = read_pairs(args.pairs, args.root) if args.pairs else [(args.photos[0], args.photos[1], None, None)]
    check_photos(pairs)
    model, name, size = load_backbone(args.checkpoint, args.backbone, args.embedding_size, device)
    threshold_pairs = open_threshold_bin(args.threshold_from) if args.threshold_from is not None else None
    results, crops = find_faces(args, pairs, device)
    if args.threshold is not None:
        threshold, source = args.threshold, "given with --threshold"
    else:
        threshold, source = threshold_from_bin(model, args.threshold_from, *threshold_pairs, device)
    score(results, crops, model, device, threshold)

    failed = [r for r in results if "error" in r]
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "backbone": name, "embedding_size": size,
                          "threshold": threshold, "threshold_source": source, "pairs": results}))
    else:
        print(f"threshold: cosine {threshold:.4f} ({source})")
        for r in results:
            verdict = r.get("error") or f"cosine {r['cosine']:.4f}: " + \
                ("same person" if r["same"] else "different people")
            expected = "" if "expected_same" not in r else \
                f"  (listed as {'same' if r['expected_same'] else 'different'})"
            print(f"{r['a']}  {r['b']}  {verdict}{expected}")
        labelled = [r for r in results if "expected_same" in r and "error" not in r]
        if labelled:
            correct = sum(r["same"] == r["expected_same"] for r in labelled)
            print(f"{correct} of {len(labelled)} labelled pairs agree with their flag")
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} pairs could not be compared (see above)")


if __name__ == "__main__":
    run_cli(main)
