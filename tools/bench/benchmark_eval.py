"""Wall-clock time of the evaluation math on random features: both verification protocols on an
LFW-sized set (6,000 pairs, with mirrored-image features), next to the old repository's Python loop
over its 20,001 thresholds, and the MegaFace search (probes x distractors) on cpu or cuda.

    python tools/bench/benchmark_eval.py                                  # verification + MegaFace at M=100,000
    python tools/bench/benchmark_eval.py --distractors 1000000 --device cuda --json
    python tools/bench/benchmark_eval.py --skip-megaface --skip-naive

The MegaFace time grows linearly with the distractor count (one pass of matrix products, top-k and
histogram updates); the table extrapolates the measured time to 10^6 distractors.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from evaluation.megaface import evaluate_megaface  # noqa: E402
from evaluation.thresholds import kfold_bounds  # noqa: E402
from evaluation.verification import evaluate_verification  # noqa: E402
from runtime import UsageError, l2_normalize, positive_int, resolve_device, run_cli  # noqa: E402


def verification_set(n_pairs, dim, seed=0):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.standard_normal((n_pairs, dim))
    other = rng.standard_normal((n_pairs, dim))
    second = np.where(issame[:, None], first + 6 * rng.standard_normal((n_pairs, dim)), other)
    embeddings = np.empty((2 * n_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    flip = embeddings + 0.3 * rng.standard_normal(embeddings.shape)
    return embeddings.astype(np.float32), flip.astype(np.float32), issame


def naive_seed_accuracy(embeddings, flip, issame):
    """The old eval_lfw.py as it ran: a Python loop over the thresholds for every fold."""
    features = np.concatenate((embeddings, flip), 1)
    left, right = features[0::2], features[1::2]
    thresholds = np.arange(-10000, 10001) * 1.0 / 10000
    accuracies = []
    for start, stop in kfold_bounds(issame.size, 10):
        train = np.ones(issame.size, bool)
        train[start:stop] = False
        mu = np.expand_dims(np.mean(np.concatenate((left[train, :], right[train, :]), 0), 0), 0)
        left_n, right_n = left - mu, right - mu
        left_n = left_n / np.expand_dims(np.sqrt(np.sum(np.power(left_n, 2), 1)), 1)
        right_n = right_n / np.expand_dims(np.sqrt(np.sum(np.power(right_n, 2), 1)), 1)
        scores = np.sum(np.multiply(left_n, right_n), 1)
        pos, neg = scores[train & issame], scores[train & ~issame]
        train_acc = np.zeros(thresholds.size)
        for i, threshold in enumerate(thresholds):
            train_acc[i] = (np.sum(pos > threshold) + np.sum(neg < threshold)) / (pos.size + neg.size)
        best = np.mean(thresholds[train_acc == np.max(train_acc)])
        test_scores, test_same = scores[start:stop], issame[start:stop]
        accuracies.append((np.sum(test_scores[test_same] > best) + np.sum(test_scores[~test_same] < best))
                          / (stop - start))
    return np.array(accuracies)


def timed(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return min(times), value


def megaface_set(n_probes, n_distractors, dim, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n_probes) % max(1, n_probes // 44)  # FaceScrub: 3,530 probes of 80 people
    centres = rng.standard_normal((labels.max() + 1, dim), dtype=np.float32)
    probes = centres[labels] + 2.0 * rng.standard_normal((n_probes, dim), dtype=np.float32)
    distractors = rng.standard_normal((n_distractors, dim), dtype=np.float32)
    return probes, labels, l2_normalize(distractors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=positive_int, default=6000, help="at least 10 (the protocols' 10 folds)")
    parser.add_argument("--dim", type=positive_int, default=512)
    parser.add_argument("--probes", type=positive_int, default=3530, help="at least 2 (one genuine pair)")
    parser.add_argument("--distractors", type=positive_int, default=100_000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (MegaFace search)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="verification timings take the best of these")
    parser.add_argument("--skip-naive", action="store_true", help="skip the old Python threshold loop")
    parser.add_argument("--skip-megaface", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.pairs < 10:
        parser.error(f"--pairs {args.pairs}: the protocols' 10 folds need at least 10")
    if args.probes < 2:
        parser.error(f"--probes {args.probes}: a genuine pair needs at least 2")
    try:
        resolve_device(args.device)
    except UsageError as error:
        parser.error(f"--device: {error}")

    rows, record = [], {"pairs": args.pairs, "dim": args.dim}
    embeddings, flip, issame = verification_set(args.pairs, args.dim)
    for protocol in ("insightface", "seed"):
        seconds, result = timed(lambda: evaluate_verification(embeddings, issame, flip, protocol=protocol),
                                args.repeats)
        record[f"verification_{protocol}_s"] = seconds
        record[f"verification_{protocol}_accuracy"] = result.accuracy_mean
        rows.append((f"verification {protocol}, {args.pairs} pairs x {args.dim}-d + flip", seconds,
                     f"acc {result.accuracy_mean:.4f}"))
    if not args.skip_naive:
        seconds, accuracies = timed(lambda: naive_seed_accuracy(embeddings, flip, issame), 1)
        record["verification_seed_naive_s"] = seconds
        rows.append(("verification seed, old Python threshold loop", seconds, f"acc {np.mean(accuracies):.4f}"))

    if not args.skip_megaface:
        probes, labels, distractors = megaface_set(args.probes, args.distractors, args.dim)
        cpu_start = time.process_time()
        # the default distractor counts: 10, 100, ... below the number given, and all of them
        seconds, result = timed(lambda: evaluate_megaface(probes, labels, distractors, device=args.device), 1)
        # CPU seconds of this process: the wall time on an idle machine is about this over the threads used
        cpu_seconds = time.process_time() - cpu_start
        largest = result.distractor_counts[-1]
        extrapolated = seconds * 1_000_000 / args.distractors
        record.update({"probes": args.probes, "distractors": args.distractors, "device": args.device,
                       "megaface_s": seconds, "megaface_cpu_s": cpu_seconds,
                       "megaface_extrapolated_1e6_s": extrapolated,
                       "megaface_rank1": result.rank1[largest],
                       "megaface_tar_at_far_1e-6": result.tar_at_far[largest][1e-6]})
        rows.append((f"MegaFace {args.probes} probes x {args.distractors} distractors x {args.dim}-d "
                     f"({args.device})", seconds,
                     f"rank-1 {result.rank1[largest]:.4f}, {cpu_seconds:.1f} CPU-s in this process"))
        rows.append(("  extrapolated to 1,000,000 distractors", extrapolated, ""))

    if args.json:
        print(json.dumps(record))
        return
    width = max(len(name) for name, _, _ in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds * 1000:>10.1f} ms  {note}")


if __name__ == "__main__":
    run_cli(main)
