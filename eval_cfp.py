"""CFP verification accuracy of a checkpoint (Sengupta et al., "Frontal to Profile Face Verification in
the Wild", WACV 2016): 7,000 pairs in 10 folds, frontal-profile (cfp_fp, the default) or
frontal-frontal (--set cfp_ff), from insightface's .bin, an image folder with a pair list, or saved
features.

    python eval_cfp.py --checkpoint runs/NAME/backbone.pt                  # data/cfp_fp.bin
    python eval_cfp.py --checkpoint runs/NAME/backbone.pt --set cfp_ff --json

Every option: python eval_cfp.py --help; the implementation is evaluation/verification/cli.py.
"""

from evaluation.verification.cli import run_verification_script

if __name__ == "__main__":
    run_verification_script("cfp_fp", set_choices=("cfp_fp", "cfp_ff"))
