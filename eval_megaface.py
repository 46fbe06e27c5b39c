"""MegaFace Challenge 1 of a checkpoint (Kemelmacher-Shlizerman et al., CVPR 2016): FaceScrub probes
against up to a million distractors, rank-1/CMC and TAR@FAR=1e-6, raw and with insightface's noise
lists ("@R"), from image folders, the devkit's JSON lists, or saved features.

    python eval_megaface.py --checkpoint runs/NAME/backbone.pt \\
        --probes data/facescrub_112x112 --distractors data/megaface_112x112
    python eval_megaface.py --checkpoint runs/NAME/backbone.pt \\
        --probes data/facescrub_112x112 --probe-list devkit/templatelists/facescrub_features_list.json \\
        --distractors data/megaface_112x112 \\
        --distractor-list devkit/templatelists/megaface_features_list.json_1000000_1 \\
        --facescrub-noises data/facescrub_noises.txt --megaface-noises data/megaface_noises.txt --json
    python eval_megaface.py --features megaface_features.npz

Every option: python eval_megaface.py --help; the implementation is evaluation/megaface/cli.py.
"""

from evaluation.megaface.cli import main
from runtime import run_cli

if __name__ == "__main__":
    run_cli(main)
