"""Wall-clock time and peak memory of eval_deepglint.py at the DeepGlint test's real size, on random
features: 1,862,120 rows of 512 float32 (the count the old repository's merge script asserts), split
into 274,000 probes of 5,700 identities (48 or 49 images each) and 1,588,120 distractors -- the ELFW /
DELFW sizes the challenge announced (274K images of 5.7K LFW identities, 1.58M distractors; its pages
are gone, so the split is this tool's, not a published count). That is 4.72 * 10^11 pairs (37.5 G
probe-probe, 435.1 G probe-distractor). Probe features are an identity's random centre plus noise,
distractors pure noise; the files are written under --out, then the command a user runs is timed in
its own process.

    python tools/bench/benchmark_deepglint.py                      # writes 3.8 GB under /tmp/deepglint_benchmark
    python tools/bench/benchmark_deepglint.py --device cuda --json
    python tools/bench/benchmark_deepglint.py --rows 20000 --probes 2000 --identities 200   # a small run

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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from evaluation.deepglint.files import write_feature_bin  # noqa: E402
from runtime import DEVICES, UsageError, check_writable, positive_int, run_cli  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
REAL = dict(rows=1_862_120, probes=274_000, identities=5_700, dim=512)
NOISE = 1.0  # per-dimension noise against unit-variance identity centres: same-identity cosines near 0.5
BLOCK = 1 << 15


def feature_blocks(seed: int, labels: np.ndarray, dim: int):
    """float32 rows a block at a time: an identity's centre plus noise for a probe, noise for a distractor."""
    centres = np.random.default_rng([seed, 1]).standard_normal((max(1, labels.max() + 1), dim)).astype(np.float32)
    for start in range(0, len(labels), BLOCK):
        rows = labels[start:start + BLOCK]
        values = np.random.default_rng([seed, 2, start]).standard_normal((len(rows), dim), dtype=np.float32)
        probes = rows >= 0
        values[probes] = centres[rows[probes]] + NOISE * values[probes]
        yield values


def write_set(out: str, rows: int, probes: int, identities: int, dim: int, seed: int) -> None:
    os.makedirs(out, exist_ok=True)
    labels = np.concatenate((np.arange(probes) % identities, np.full(rows - probes, -1)))
    with open(os.path.join(out, "labels.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(map(str, labels.tolist())) + "\n")
    write_feature_bin(os.path.join(out, "features.bin"), feature_blocks(seed, labels, dim), rows, dim)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/deepglint_benchmark", help="where the set is written (and reused)")
    parser.add_argument("--rows", type=positive_int, default=REAL["rows"], help="images (default 1,862,120)")
    parser.add_argument("--probes", type=positive_int, default=REAL["probes"], help="probe images (default 274,000)")
    parser.add_argument("--identities", type=positive_int, default=REAL["identities"],
                        help="probe identities (default 5,700)")
    parser.add_argument("--dim", type=positive_int, default=REAL["dim"], help="feature width (default 512)")
    parser.add_argument("--fpr", default="1e-9", help="the FPR eval_deepglint.py is run at (default 1e-9)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="eval_deepglint.py's --device (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the lines")
    args = parser.parse_args(argv)
    if not args.identities * 2 <= args.probes <= args.rows:
        raise UsageError(f"need 2 x identities <= probes <= rows (every identity two images or more), got "
                         f"{args.identities}, {args.probes}, {args.rows}")
    check_writable(args.out, "--out", folder=True, instead="choose a folder you can write")
    settings = {key: getattr(args, key) for key in ("rows", "probes", "identities", "dim", "seed")}
    settings["noise"] = NOISE
    stamp = os.path.join(args.out, "benchmark.json")
    try:
        with open(stamp, encoding="utf-8") as handle:
            reuse = json.load(handle) == settings
    except (OSError, ValueError):
        reuse = False
    if not reuse:
        started = time.perf_counter()
        print(f"writing {args.rows:,} x {args.dim} random features under {args.out} ...", file=sys.stderr)
        write_set(args.out, args.rows, args.probes, args.identities, args.dim, args.seed)
        with open(stamp, "w", encoding="utf-8") as handle:
            json.dump(settings, handle)
        print(f"written in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    command = [sys.executable, os.path.join(REPO, "eval_deepglint.py"), "--features",
               os.path.join(args.out, "features.bin"), "--labels", os.path.join(args.out, "labels.txt"),
               "--fpr", args.fpr, "--device", args.device, "--json"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"eval_deepglint.py failed:\n{finished.stderr[-3000:]}")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    distractors = args.rows - args.probes
    record = {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20,
              "device": args.device, "rows": args.rows, "probes": args.probes, "identities": args.identities,
              "distractors": distractors, "dim": args.dim,
              "pairs": result["n_positive_pairs"] + result["n_negative_pairs"],
              "load_average_before": load_before, "load_average_after": os.getloadavg()[0], "cpus": os.cpu_count(),
              "result": result, "command": " ".join(command[1:])}
    if args.json:
        print(json.dumps(record))
        return
    print(f"eval_deepglint.py on {args.rows:,} random {args.dim}-d features ({args.probes:,} probes of "
          f"{args.identities:,} identities, {distractors:,} distractors; {record['pairs']:,} pairs) on {args.device}: "
          f"{seconds:.1f} s, peak resident memory {record['peak_rss_gb']:.2f} GB"
          + (f", peak CUDA memory {result['cuda_peak_gb']:.2f} GB" if "cuda_peak_gb" in result else ""))
    print(f"TPR at FPR {result['fpr']}: {result['tpr']:.4f}, rank-1 {result['rank1']:.4f}; "
          f"{result['rescored_pairs']:,} pairs rescored in float64")
    print(f"load average {load_before:.1f} before, {record['load_average_after']:.1f} after, on {os.cpu_count()} CPUs")
    print(f"command: python {record['command']}")


if __name__ == "__main__":
    run_cli(main)
