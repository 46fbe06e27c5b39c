"""LFW verification accuracy of a checkpoint (Huang et al., "Labeled Faces in the Wild", 2007): 6,000
pairs in 10 folds, from insightface's lfw.bin, an image folder with pairs.txt, or saved features.

    python eval_lfw.py --checkpoint runs/NAME/backbone.pt                  # data/lfw.bin
    python eval_lfw.py --checkpoint runs/NAME/backbone.pt --protocol seed --json
    python eval_lfw.py --checkpoint ckpt.pt --images data/lfw_images --pairs data/lfw_images/pairs.txt

Every option: python eval_lfw.py --help; the implementation is evaluation/verification/cli.py.
"""

from evaluation.verification.cli import run_verification_script

if __name__ == "__main__":
    run_verification_script("lfw")
