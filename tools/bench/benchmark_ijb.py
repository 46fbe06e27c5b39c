"""Wall-clock time and peak memory of eval_ijb.py on features at IJB-C's real size: 469,375 images in
23,124 templates (3,531 gallery templates, one per subject, split 1,772 / 1,759 into G1 and G2, and
19,593 probe templates), 15,658,489 template pairs (19,557 genuine), 512-d features and their mirror
images. The metadata and the features are random (features: a subject's centre plus noise), written
in the release layout under --out, then the command a user runs is timed in its own process.

    python tools/bench/benchmark_ijb.py                       # writes about 2.2 GB under /tmp/ijb_benchmark
    python tools/bench/benchmark_ijb.py --out DIR --repeats 3 --json

A second run with the same --out and sizes reuses the files. Other processes on the machine slow the
measurement down; the report gives the load average before and after it.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from runtime import atomic_file, check_writable, positive_int, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
IJBC = dict(images=469_375, gallery=(1_772, 1_759), probes=19_593, pairs=15_658_489, genuine=19_557)
NOISE = 4.0  # per-dimension noise against unit-variance subject centres


def digits_of(values: np.ndarray) -> np.ndarray:
    return np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)


def integer_lines(columns) -> bytes:
    """Lines of space-separated non-negative integers, formatted without a Python loop over rows."""
    columns = [np.asarray(column, dtype=np.int64) for column in columns]
    widths = [digits_of(column) for column in columns]
    ends = np.cumsum(sum(widths) + len(columns))
    text = np.full(int(ends[-1]), ord(" "), dtype=np.uint8)
    text[ends - 1] = ord("\n")
    position = ends - (sum(widths) + len(columns))
    for column, width in zip(columns, widths):
        for place in range(int(width.max())):
            inside = place < width
            text[(position + width - 1 - place)[inside]] = (column[inside] // 10 ** place % 10 + 48).astype(np.uint8)
        position = position + width + 1
    return text.tobytes()


def template_sizes(rng, count: int, total: int) -> np.ndarray:
    """`count` template sizes >= 1 summing to `total`, long-tailed like IJB-C's."""
    sizes = np.maximum(1, np.round(rng.lognormal(2.3, 1.0, count) * total / (count * np.exp(2.8))).astype(np.int64))
    while sizes.sum() != total:
        change = total - int(sizes.sum())
        picked = rng.choice(count, min(abs(change), count), replace=False)
        sizes[picked] = np.maximum(1, sizes[picked] + np.sign(change))
    return sizes


def media_ids(rng, sizes: np.ndarray) -> np.ndarray:
    """Per image: stills are their own media (about a third), the rest frames of videos of ~6 frames."""
    total = int(sizes.sum())
    still = rng.random(total) < 0.35
    new_media = still | (rng.random(total) < 1 / 6)
    new_media[np.cumsum(sizes)[:-1]] = True  # a template's first image starts a media
    new_media[0] = True
    return np.cumsum(new_media) + 100_000


def impostor_pairs(rng, n_gallery: int, n_probes: int, count: int, genuine_cell: np.ndarray) -> np.ndarray:
    """`count` distinct (gallery, probe) cells, none of them a genuine cell, as flat indices."""
    cells = n_gallery * n_probes
    rate = count / (cells - len(genuine_cell)) * 1.001
    chosen = []
    rows = 256
    for start in range(0, n_gallery, rows):
        block = rng.random((min(rows, n_gallery - start), n_probes)) < rate
        chosen.append(np.flatnonzero(block) + start * n_probes)
    chosen = np.setdiff1d(np.concatenate(chosen), genuine_cell, assume_unique=True)
    if len(chosen) < count:
        raise RuntimeError("drew too few impostor pairs; run again with another --seed")
    return np.delete(chosen, rng.choice(len(chosen), len(chosen) - count, replace=False))


def write_features(path, seed: int, subjects: np.ndarray, dim: int, block: int = 1 << 15) -> None:
    """embeddings and embeddings_flip float32 [N, dim] into an uncompressed .npz, a block at a time:
    a subject's centre plus noise (about as separable as a good model's IJB-C features), the mirror
    image's feature that plus a little more."""
    centres = np.random.default_rng([seed, 1]).standard_normal((subjects.max() + 1, dim)).astype(np.float32)
    header = {"descr": "<f4", "fortran_order": False, "shape": (len(subjects), dim)}
    with atomic_file(path) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key in ("embeddings", "embeddings_flip"):
            with archive.open(f"{key}.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                for start in range(0, len(subjects), block):
                    rows = subjects[start:start + block]
                    rng = np.random.default_rng([seed, 2, start])  # the same noise for both arrays
                    values = centres[rows] + NOISE * rng.standard_normal((len(rows), dim), dtype=np.float32)
                    if key == "embeddings_flip":
                        values += NOISE / 4 * rng.standard_normal((len(rows), dim), dtype=np.float32)
                    handle.write(values.tobytes())


def write_set(out: str, dim: int, seed: int) -> tuple[str, str]:
    """(release folder, features file) of a random IJB-C-sized set under `out`."""
    rng = np.random.default_rng(seed)
    root, meta = os.path.join(out, "IJBC"), os.path.join(out, "IJBC", "meta")
    os.makedirs(meta, exist_ok=True)
    n_gallery, n_probes = sum(IJBC["gallery"]), IJBC["probes"]
    ids = rng.choice(np.arange(1, 10 * (n_gallery + n_probes)), n_gallery + n_probes, replace=False)
    gallery_ids, probe_ids = ids[:n_gallery], ids[n_gallery:]
    probe_subjects = rng.integers(0, n_gallery, n_probes)  # gallery template i is subject i's
    template_subjects = np.concatenate((np.arange(n_gallery), probe_subjects))
    sizes = template_sizes(rng, len(ids), IJBC["images"])
    image_template = np.repeat(np.arange(len(ids)), sizes)
    names = np.char.add(np.arange(1, IJBC["images"] + 1).astype(str), ".jpg")
    with open(os.path.join(meta, "ijbc_face_tid_mid.txt"), "w") as handle:
        handle.writelines(f"{n} {t} {m}\n" for n, t, m in zip(names.tolist(), ids[image_template].tolist(),
                                                                 media_ids(rng, sizes).tolist()))
    points = np.array([[38.3, 51.7], [73.5, 51.5], [56.0, 71.7], [41.5, 92.4], [70.7, 92.2]]) * 1.4
    landmarks = points.ravel() + rng.normal(0, 4, (IJBC["images"], 10))
    faceness = np.where(rng.random(IJBC["images"]) < 0.05, rng.uniform(0.1, 0.9, IJBC["images"]),
                        rng.uniform(0.9, 1.0, IJBC["images"]))
    table = np.column_stack((landmarks, faceness))
    with open(os.path.join(meta, "ijbc_name_5pts_score.txt"), "w") as handle:
        handle.writelines(f"{name} {' '.join(f'{v:.3f}' for v in row)}\n" for name, row in zip(names.tolist(), table))
    genuine_probes = np.sort(rng.choice(n_probes, IJBC["genuine"], replace=False))
    genuine_cell = np.sort(probe_subjects[genuine_probes] * n_probes + genuine_probes)
    cells = np.union1d(impostor_pairs(rng, n_gallery, n_probes, IJBC["pairs"] - IJBC["genuine"], genuine_cell),
                       genuine_cell)
    labels = np.isin(cells, genuine_cell, assume_unique=True)
    with open(os.path.join(meta, "ijbc_template_pair_label.txt"), "wb") as handle:
        for start in range(0, len(cells), 1 << 21):
            part = cells[start:start + (1 << 21)]
            handle.write(integer_lines((gallery_ids[part // n_probes], probe_ids[part % n_probes],
                                        labels[start:start + (1 << 21)])))
    split = IJBC["gallery"][0]
    lists = {"ijbc_1N_gallery_G1.csv": np.arange(split), "ijbc_1N_gallery_G2.csv": np.arange(split, n_gallery),
             "ijbc_1N_probe_mixed.csv": np.arange(n_gallery, len(ids))}
    for filename, templates in lists.items():
        rows = np.flatnonzero(np.isin(image_template, templates))
        with open(os.path.join(meta, filename), "w") as handle:
            handle.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            handle.writelines(f"{t},{s},{n}\n" for t, s, n in zip(ids[image_template[rows]].tolist(),
                                                                 template_subjects[image_template[rows]].tolist(),
                                                                 names[rows].tolist()))
    features = os.path.join(out, "features.npz")
    write_features(features, seed, template_subjects[image_template], dim)
    return root, features


def stage_seconds(root: str, features_path: str, out_dir: str) -> dict:
    """Where the command's time goes: its steps timed one by one in this process."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return clock[-1] - clock[-2]

    import torch
    from evaluation.ijb import Mode
    from evaluation.ijb.cli import evaluate
    from evaluation.ijb.features import load_ijb_features
    from evaluation.ijb.meta import read_ijb_meta
    from evaluation.ijb.plot import save_ijb_figures
    from runtime import keep_freed_cpu_memory
    seconds = {"imports": lap()}
    keep_freed_cpu_memory(torch.device("cpu"))
    meta = read_ijb_meta(root, "ijbc", landmarks=False)
    seconds["metadata"] = lap()
    features, _ = load_ijb_features(features_path, len(meta.names))
    result = evaluate(meta, features, Mode(), None)
    seconds["evaluation"] = lap()
    save_ijb_figures(result, out_dir, "ijbc")
    seconds["figures"] = lap()
    return seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/ijb_benchmark", help="where the set is written (and reused)")
    parser.add_argument("--dim", type=positive_int, default=512, help="feature width (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=positive_int, default=1, help="timed runs (the table gives each)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    check_writable(args.out, "--out", folder=True, instead="choose a folder you can write")
    stamp = os.path.join(args.out, "benchmark.json")
    settings = {"dim": args.dim, "seed": args.seed, "noise": NOISE, **IJBC}
    try:
        with open(stamp, encoding="utf-8") as handle:
            reuse = json.load(handle) == json.loads(json.dumps(settings))
    except (OSError, ValueError):
        reuse = False
    if not reuse:
        started = time.perf_counter()
        print(f"writing an IJB-C-sized set under {args.out} ...", file=sys.stderr)
        write_set(args.out, args.dim, args.seed)
        with open(stamp, "w", encoding="utf-8") as handle:
            json.dump(settings, handle)
        print(f"written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    command = [sys.executable, os.path.join(REPO, "eval_ijb.py"), "--root", os.path.join(args.out, "IJBC"),
               "--set", "ijbc", "--features", os.path.join(args.out, "features.npz"), "--out-dir",
               os.path.join(args.out, "results"), "--json"]
    runs, load_before = [], os.getloadavg()[0]
    for _ in range(args.repeats):
        started = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode != 0:
            sys.exit(f"eval_ijb.py failed:\n{finished.stderr}")
        runs.append(time.perf_counter() - started)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20
    stages = stage_seconds(os.path.join(args.out, "IJBC"), os.path.join(args.out, "features.npz"),
                           os.path.join(args.out, "results"))
    record = {"stages": stages, "seconds": runs, "best_seconds": min(runs), "peak_rss_gb": peak_gb, "load_average_before": load_before,
              "load_average_after": os.getloadavg()[0], "cpus": os.cpu_count(), "result": json.loads(finished.stdout),
              "command": " ".join(command[1:])}
    if args.json:
        print(json.dumps(record))
        return
    print(f"eval_ijb.py on IJB-C-sized features ({IJBC['images']:,} images, {IJBC['pairs']:,} pairs, "
          f"{args.dim}-d): " + ", ".join(f"{seconds:.1f} s" for seconds in runs)
          + f"; peak resident memory {peak_gb:.2f} GB")
    print("in one process: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items()))
    print(f"load average {load_before:.1f} before, {record['load_average_after']:.1f} after, on {os.cpu_count()} CPUs")
    print(f"command: python {record['command']}")


if __name__ == "__main__":
    run_cli(main)
