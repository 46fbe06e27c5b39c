"""eval_deepglint.py: the DeepGlint Trillion-Pairs measures (evaluation/deepglint/protocol.py says
what is computed) of a feature binary and its label list.

    python eval_deepglint.py --features deepglint_test_feature.bin --labels labels.txt
    python eval_deepglint.py --features F.bin --labels L.txt --fpr 1e-8 --device cuda --json

Inputs: the feature binary tools/model/deepglint_features.py writes (the old repository's layout: a
16-byte OpenCV-mat header, then N x D float32 rows), and a text file of N labels in the same order,
an identity >= 0 for a probe image and -1 for a distractor. Every row is checked (finite, not all
zero) before the search starts.

Output: the set's sizes, TPR at the FPR (default 1e-9) with its threshold, and MegaFace-style rank-1;
--json adds one last line of JSON holding tpr, rank1 and every count.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction

import torch

from runtime import DEVICES, DataFormatError, UsageError

from ..cli import resolve_device
from .files import check_feature_rows, read_feature_bin, read_labels
from .protocol import check_kept, count_pairs, evaluate_deepglint


def fraction(text: str) -> Fraction:
    """argparse type: a number in [0, 1], kept as the exact decimal written (1e-9 is 1/10^9)."""
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 1e-9, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, metavar="F.bin", help="feature binary (header + N x D float32)")
    parser.add_argument("--labels", required=True, metavar="L.txt", help="N lines: identity >= 0, or -1 (distractor)")
    parser.add_argument("--fpr", type=fraction, default=Fraction(1, 10 ** 9), help="false positive rate (default 1e-9)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda when present (default)")
    parser.add_argument("--json", action="store_true", help="print one last line of JSON after the table")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = resolve_device(parser, args.device)
    features = read_feature_bin(args.features)
    labels = read_labels(args.labels, len(features))
    try:
        counts = count_pairs(labels, args.fpr)
    except ValueError as error:
        raise DataFormatError(args.labels, str(error)) from None
    try:
        check_kept(counts)
    except ValueError as error:
        raise UsageError(f"--fpr {float(args.fpr):g}: {error}") from None
    started = time.perf_counter()
    check_feature_rows(args.features, features)
    checked = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = evaluate_deepglint(features, labels, args.fpr, device=device, progress=True)
    record = {"features": args.features, "labels": args.labels, "device": device.type, **result.to_json(),
              "check_seconds": checked - started, "search_seconds": time.perf_counter() - checked}
    if device.type == "cuda":
        record["cuda_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    print(f"DeepGlint: {result.n_probes:,} probes of {result.n_identities:,} identities, {result.n_distractors:,} "
          f"distractors, {result.dim}-d features ({args.features})")
    print(f"verification: {result.n_positive_pairs:,} positive and {result.n_negative_pairs:,} negative pairs; "
          f"TPR at FPR = {result.fpr}: {100 * result.tpr:.3f}% (threshold {result.threshold:.6f}, at most "
          f"{result.false_accepts:,} negatives above it)")
    print(f"identification: rank-1 {100 * result.rank1:.3f}% over {result.n_trials:,} ordered same-identity pairs")
    if args.json:
        print(json.dumps(record))
