"""IJB-C / IJB-B of a checkpoint (Maze et al., "IARPA Janus Benchmark-C", ICB 2018; Whitelam et al.,
"IARPA Janus Benchmark-B", CVPRW 2017): 1:1 template verification, TAR at FAR = 1e-6 .. 1e-1 (the
1e-4 and 1e-5 columns are the ones papers compare), and 1:N open-set identification (rank-1/5/10,
TPIR at FPIR = 0.01 and 0.1), from the loose crops and their 5-point landmarks or from saved features.

    python eval_ijb.py --root IJB_release/IJBC --set ijbc --checkpoint runs/NAME/backbone.pt
    python eval_ijb.py --root IJB_release/IJBB --set ijbb --checkpoint runs/NAME/backbone.pt --json
    python eval_ijb.py --root IJB_release/IJBC --features ijbc_features.npz --mode N0D0F0

Every option: python eval_ijb.py --help; the implementation is evaluation/ijb/cli.py.
"""

from evaluation.ijb.cli import main
from runtime import run_cli

if __name__ == "__main__":
    run_cli(main)
