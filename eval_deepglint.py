"""The DeepGlint Trillion-Pairs measures of a feature binary (tools/model/deepglint_features.py writes one)
wherever identity labels exist: TPR at FPR = 1e-9 over every probe-probe and probe-distractor pair,
and MegaFace-style rank-1, exact at the challenge's 1,862,120 images.

    python eval_deepglint.py --features deepglint_test_feature.bin --labels labels.txt [--fpr 1e-9] [--json]

Every option: python eval_deepglint.py --help; the implementation is evaluation/deepglint/.
"""

from evaluation.deepglint.cli import main
from runtime import run_cli

if __name__ == "__main__":
    run_cli(main)
