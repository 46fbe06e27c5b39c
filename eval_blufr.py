"""LFW under BLUFR (Liao, Lei, Yi, Li, "A Benchmark Study of Large-scale Unconstrained Face
Recognition", IJCB 2014): all 13,233 LFW images, 10 trials of verification (VR at FAR = 0.1%) and
open-set identification (DIR at rank 1, FAR = 1%), each reported as mean - std over the trials.

    python eval_blufr.py --config blufr_lfw_config.mat --images data/lfw_112 --checkpoint runs/NAME/backbone.pt
    python eval_blufr.py --config blufr_lfw_config.mat --features lfw_blufr.npy --json

Every option: python eval_blufr.py --help; the implementation is evaluation/blufr/.
"""

from evaluation.blufr.cli import main
from runtime import run_cli

if __name__ == "__main__":
    run_cli(main)
