"""The DeepGlint Trillion-Pairs test: its feature binary and label list (files), TPR at FPR and
rank-1 computed exactly by a streaming search (protocol), and eval_deepglint.py's command line (cli).
tools/model/deepglint_features.py writes the feature binary from an image folder."""

from .files import (check_feature_rows, feature_order, list_images, read_feature_bin, read_labels,
                    write_feature_bin)
from .protocol import DeepGlintResult, PairCounts, count_pairs, evaluate_deepglint, float32_error_bound

__all__ = [
    "DeepGlintResult", "PairCounts", "check_feature_rows", "count_pairs", "evaluate_deepglint", "feature_order",
    "float32_error_bound", "list_images", "read_feature_bin", "read_labels", "write_feature_bin",
]
