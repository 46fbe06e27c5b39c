"""Detect and align every face of a photo folder into 112x112 crops, the input of everything else here.

    python tools/data/align_faces.py photos/ data/aligned              # photos/<identity>/*.jpg
    python tools/data/align_faces.py photos/ data/aligned --all-faces --min-size 40 --workers 2
    python tools/data/images2rec.py --folder data/aligned data/aligned_pack

SRC is walked recursively and its layout is kept: SRC/alice/1.jpg -> OUT/alice/1.jpg, so that one
sub-folder per identity stays one per identity, what `tools/data/images2rec.py --folder` and train.py
(train_data = the folder) read. Faces are found with MTCNN (dataset.detect) and warped onto the
ArcFace template (dataset.align_face). By default only the largest face of a photo is kept (an
identity folder shows one person; a bystander must not join the identity); --all-faces writes
every face as <name>_<k>.jpg, k in score order.

Nothing is dropped silently: photos with no face (or none passing --min-score / --min-size) and
files that could not be read are listed in OUT/align_report.txt and counted on stderr. The run can
be killed and started again: crops are written under a temporary name and renamed, each photo is
recorded in OUT/align_done.jsonl once its crops exist, and a re-run skips the recorded photos.
"""

import argparse
import json
import multiprocessing
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import align_face  # noqa: E402
from dataset.detect import detect_faces, face_sizes, largest_face  # noqa: E402
from dataset.image_codec import encode_image, read_image_file  # noqa: E402
from dataset.image_list import IMAGE_EXTENSIONS  # noqa: E402
from runtime import DataFormatError, UsageError, check_writable, resolve_device, run_cli  # noqa: E402
from runtime.artifacts import PARTIAL_SUFFIX, atomic_file  # noqa: E402

DONE_FILE, REPORT_FILE, SETTINGS_FILE = "align_done.jsonl", "align_report.txt", "align_settings.json"
CROP_SIZE = 112


# ============ the photos to do ============

def find_photos(source: str, out_dir: str) -> tuple[list[str], list[str]]:
    """(relative paths of the image files, relative paths of the other files) under `source`, sorted,
    leaving out `out_dir` should it lie inside `source`."""
    out_real = os.path.realpath(out_dir)
    images, others = [], []
    for folder, subfolders, names in os.walk(source):
        subfolders[:] = sorted(s for s in subfolders if os.path.realpath(os.path.join(folder, s)) != out_real)
        relative = os.path.relpath(folder, source)
        for name in sorted(names):
            path = name if relative == "." else os.path.join(relative, name).replace(os.sep, "/")
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(path)
    return images, others


def output_stems(photos: list[str]) -> dict[str, str]:
    """photo -> the relative path its crops are named after: the photo's without the extension, or
    with the extension folded in ("a_png") where two photos of one folder share a stem."""
    stems = {photo: os.path.splitext(photo)[0] for photo in photos}
    counts = {}
    for stem in stems.values():
        counts[stem] = counts.get(stem, 0) + 1
    return {photo: stem if counts[stem] == 1 else f"{stem}_{os.path.splitext(photo)[1][1:].lower()}"
            for photo, stem in stems.items()}


# ============ one photo ============

_SETTINGS = {}  # set once per worker process by _start_worker


def _start_worker(settings: dict, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _SETTINGS.update(settings)


def process_photo(task: tuple[str, str]) -> dict:
    """Detect, filter, align and write the crops of one photo; the record of what happened."""
    photo, stem = task
    settings = _SETTINGS
    record = {"photo": photo, "crops": []}
    try:
        image = read_image_file(os.path.join(settings["source"], photo))
    except DataFormatError as error:
        return {**record, "status": "unreadable", "detail": error.problem}
    boxes, scores, landmarks = detect_faces(image, min_face_size=settings["min_size"], device=settings["device"])
    passing = np.flatnonzero((scores >= settings["min_score"]) & (face_sizes(boxes) >= settings["min_size"]))
    record["found"] = len(boxes)
    if not len(passing):
        detail = "no face found" if not len(boxes) else \
            f"{len(boxes)} found, none with score >= {settings['min_score']} and size >= {settings['min_size']} px"
        return {**record, "status": "no_face", "detail": detail}
    if not settings["all_faces"]:
        passing = passing[[largest_face(boxes[passing])]]
    for k, index in enumerate(passing):
        name = f"{stem}_{k}" if settings["all_faces"] else stem
        relative = f"{name}.{settings['format']}"
        crop = align_face(image, landmarks[index], CROP_SIZE)
        with atomic_file(os.path.join(settings["out_dir"], relative)) as handle:
            handle.write(encode_image(crop, settings["quality"], f".{settings['format']}"))
        record["crops"].append(relative)
    record["scores"] = [round(float(scores[i]), 6) for i in passing]
    return {**record, "status": "ok"}


# ============ resuming ============

def check_settings(out_dir: str, settings: dict) -> None:
    """Record the options that shape the crops in OUT; a re-run with other ones would mix two kinds."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            before = json.load(handle)
        changed = {key: (before.get(key), value) for key, value in settings.items() if before.get(key) != value}
        if changed:
            what = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise UsageError(f"{out_dir} holds crops made with other options ({what}): use another OUT folder, "
                             f"or delete {out_dir} to start again")
        return
    with atomic_file(path, "w") as handle:
        json.dump(settings, handle, indent=1, sort_keys=True)


def read_done(out_dir: str) -> dict[str, dict]:
    """photo -> its record from earlier runs. A line cut short by a kill is dropped (that photo is
    done again) and the file rewritten without it, so that appending starts on a fresh line."""
    path = os.path.join(out_dir, DONE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    records, broken = {}, False
    for line in lines:
        try:
            record = json.loads(line)
            records[record["photo"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            broken = True
    # A photo whose crops were deleted since is done again.
    records = {photo: r for photo, r in records.items()
               if all(os.path.isfile(os.path.join(out_dir, crop)) for crop in r.get("crops", []))}
    if broken or len(records) != len(lines):
        with atomic_file(path, "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in records.values())
    return records


def remove_partials(out_dir: str) -> None:
    """Crops a killed run left half written; their photos are not in the done list and get redone."""
    for folder, _, names in os.walk(out_dir):
        for name in names:
            if name.endswith(PARTIAL_SUFFIX):
                os.remove(os.path.join(folder, name))


# ============ the report ============

def write_report(out_dir: str, records: dict, others: list[str]) -> dict:
    """OUT/align_report.txt over every photo recorded so far; the counts."""
    by_status = {status: [r for r in records.values() if r["status"] == status]
                 for status in ("ok", "no_face", "unreadable")}
    loose = [r for r in by_status["ok"] if r["photo"].count("/") != 1]
    lines = [f"# {len(records)} photos: {len(by_status['ok'])} aligned, {len(by_status['no_face'])} with no face, "
             f"{len(by_status['unreadable'])} unreadable; {len(others)} other files skipped", ""]
    for title, status in (("no face", "no_face"), ("could not be read", "unreadable")):
        lines.append(f"## {title} ({len(by_status[status])})")
        lines += [f"{r['photo']}\t{r['detail']}" for r in sorted(by_status[status], key=lambda r: r["photo"])]
        lines.append("")
    lines.append(f"## not images, skipped (extensions other than {', '.join(IMAGE_EXTENSIONS)}) ({len(others)})")
    lines += others + [""]
    if loose:
        lines.append(f"## aligned but not directly in an identity folder ({len(loose)}): images2rec --folder and "
                     "train.py read only OUT/<identity>/*")
        lines += sorted(r["photo"] for r in loose) + [""]
    path = os.path.join(out_dir, REPORT_FILE)
    with atomic_file(path, "w") as handle:
        handle.write("\n".join(lines))
    return {"photos": len(records), "aligned": len(by_status["ok"]),
            "faces": sum(len(r["crops"]) for r in by_status["ok"]), "no_face": len(by_status["no_face"]),
            "unreadable": len(by_status["unreadable"]), "other_files": len(others), "outside_identity": len(loose)}


# ============ main ============

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="folder of photos; its sub-folders (identities) are kept")
    parser.add_argument("out_dir", help="folder for the crops, the report and the done list")
    parser.add_argument("--all-faces", action="store_true", help="every face of a photo, not only the largest")
    parser.add_argument("--min-score", type=float, default=0.9,
                        help="lowest O-Net face probability kept (its own cut-off is 0.7; default 0.9)")
    parser.add_argument("--min-size", type=float, default=20.0,
                        help="smallest face side in pixels searched for and kept (default 20)")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes detecting in parallel (default: one per CPU core; 1 on a GPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the GPU when there is one)")
    args = parser.parse_args(argv)
    if not 0 <= args.min_score <= 1:
        parser.error(f"--min-score {args.min_score}: must be a probability in [0, 1]")
    if not args.min_size > 0:
        parser.error(f"--min-size {args.min_size}: must be a positive number of pixels")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality {args.quality}: must be in 1..100")
    if args.workers < 0:
        parser.error(f"--workers {args.workers}: must be 0 (automatic) or more")
    if not os.path.isdir(args.source):
        raise DataFormatError(args.source, "photo folder not found")
    check_writable(args.out_dir, "OUT_DIR", folder=True, instead="choose a folder you can write")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    workers = args.workers or (1 if device.type == "cuda" else os.cpu_count() or 1)
    photos, others = find_photos(args.source, args.out_dir)
    if not photos:
        raise DataFormatError(args.source, f"no images ({', '.join(IMAGE_EXTENSIONS)}) anywhere in the folder")
    shaping = {"all_faces": args.all_faces, "min_score": args.min_score, "min_size": args.min_size,
               "format": args.format, "quality": args.quality, "size": CROP_SIZE}
    os.makedirs(args.out_dir, exist_ok=True)
    check_settings(args.out_dir, shaping)
    remove_partials(args.out_dir)
    done = read_done(args.out_dir)
    stems = output_stems(photos)
    tasks = [(photo, stems[photo]) for photo in photos if photo not in done]
    settings = {**shaping, "source": args.source, "out_dir": args.out_dir, "device": str(device)}
    if done:
        print(f"{len(done)} photos done in an earlier run; {len(tasks)} to do", file=sys.stderr)

    workers = max(1, min(workers, len(tasks)))
    # One thread per process when several run side by side; a lone process uses every core.
    threads = 1 if workers > 1 else (os.cpu_count() or 1)
    with open(os.path.join(args.out_dir, DONE_FILE), "a", encoding="utf-8") as log, \
            tqdm(total=len(tasks), desc="aligning", unit="photo") as progress:
        def record(result):
            log.write(json.dumps(result) + "\n")
            log.flush()
            done[result["photo"]] = result
            progress.update()
        if workers == 1:
            _start_worker(settings, threads)
            for task in tasks:
                record(process_photo(task))
        else:
            # CUDA cannot be used in a forked child; on the CPU, fork starts the workers fastest.
            context = multiprocessing.get_context("spawn" if device.type == "cuda" else "fork")
            with context.Pool(workers, _start_worker, (settings, threads)) as pool:
                for result in pool.imap_unordered(process_photo, tasks, chunksize=1):
                    record(result)

    counts = write_report(args.out_dir, {photo: done[photo] for photo in photos if photo in done}, others)
    print(f"{counts['photos']} photos: {counts['aligned']} aligned ({counts['faces']} faces) -> {args.out_dir}; "
          f"{counts['no_face']} with no face, {counts['unreadable']} unreadable, {counts['other_files']} other files "
          f"skipped (listed in {os.path.join(args.out_dir, REPORT_FILE)})", file=sys.stderr)
    if counts["outside_identity"]:
        print(f"note: {counts['outside_identity']} photos are not directly in an identity sub-folder of "
              f"{args.source}; images2rec.py --folder and train.py read only <identity>/<image> "
              f"(listed in the report)", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
