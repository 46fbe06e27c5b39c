"""AgeDB-30 verification accuracy of a checkpoint (Moschoglou et al., "AgeDB: the first manually
collected, in-the-wild age database", CVPRW 2017): 6,000 pairs 30 years apart in 10 folds, from
insightface's agedb_30.bin, an image folder with a pair list, or saved features.

    python eval_agedb30.py --checkpoint runs/NAME/backbone.pt              # data/agedb_30.bin
    python eval_agedb30.py --checkpoint runs/NAME/backbone.pt --bin data/calfw.bin

Every option: python eval_agedb30.py --help; the implementation is evaluation/verification/cli.py.
"""

from evaluation.verification.cli import run_verification_script

if __name__ == "__main__":
    run_verification_script("agedb_30")
