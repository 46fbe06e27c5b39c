"""Write a synthetic IJB-C (or IJB-B) release tree, the layout eval_ijb.py reads, with rendered loose
crops and their 5-point landmarks (dataset/synthetic_ijb.py says what it holds).

    python tools/data/make_synthetic_ijb.py /tmp/IJB_release/IJBC
    python eval_ijb.py --root /tmp/IJB_release/IJBC --checkpoint runs/NAME/backbone.pt
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset.synthetic import DEFAULT_DIFFICULTY  # noqa: E402
from dataset.synthetic_ijb import GALLERY_NAMES, write_synthetic_ijb  # noqa: E402
from runtime import UsageError, check_writable, positive_int, run_cli  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT", help="the release folder to write (meta/ and loose_crop/ in it)")
    parser.add_argument("--set", choices=sorted(GALLERY_NAMES), default="ijbc", help="file names of which set")
    parser.add_argument("--subjects", type=positive_int, default=20, help="enrolled subjects (at least 4)")
    parser.add_argument("--probes-per-subject", type=positive_int, default=3)
    parser.add_argument("--unenrolled-subjects", type=int, default=2, help="subjects with probe templates only")
    parser.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY, help="synthetic nuisance, 0 to 1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_writable(args.out, "OUT", folder=True, instead="choose a folder you can write")
    try:
        plan = write_synthetic_ijb(args.out, args.set, args.subjects, args.probes_per_subject,
                                   args.unenrolled_subjects, args.seed, args.difficulty)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(f"{args.out}: {len(plan.names)} images, {len(plan.template_subject)} templates, {len(plan.pairs)} pairs "
          f"({int(plan.labels.sum())} genuine), galleries of {', '.join(str(len(g)) for g in plan.galleries.values())} "
          f"templates, {len(plan.probes)} probe templates")


if __name__ == "__main__":
    run_cli(main)
