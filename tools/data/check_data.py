"""Scan a training source before a long run: every record decodes and is 112x112, the labels fit the
class count, no identity is empty (an image folder's empty identity is named by its folder), and
identical images (by content hash) are listed.

    python tools/data/check_data.py data/synthetic                  # a .rec/.idx pack
    python tools/data/check_data.py data/my_faces --workers 2        # an image folder (one sub-folder per identity)
    python tools/data/check_data.py list.txt --root images --num-classes 10575 --json

Exit status 0 when the source is clean, 1 when a problem was found (the report names each).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from dataset import open_training_set  # noqa: E402
from dataset.check import scan_training_source  # noqa: E402
from runtime import positive_int, run_cli  # noqa: E402

SHOWN = 20  # bad records and duplicate groups printed in the table (all of them are in --json)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a .rec/.idx pack (folder or prefix), an image folder, or a `path label` list")
    parser.add_argument("--root", default="", help="folder the list's paths are relative to (default: the list's)")
    parser.add_argument("--num-classes", type=positive_int, help="the class count to check labels against "
                                                                 "(default: the pack's property file, else the labels)")
    parser.add_argument("--workers", type=positive_int, default=min(4, os.cpu_count() or 1), help="processes")
    parser.add_argument("--json", action="store_true", help="print the whole report as one JSON object")
    args = parser.parse_args(argv)
    source = open_training_set(args.source, args.root)
    report = scan_training_source(source, args.num_classes, args.workers, progress=not args.json)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.source}: {report['records']} records, {report['readable']} readable, {report['classes']} "
              f"classes (largest label {report['largest_label']})")
        for title, items in (("bad records", report["bad_records"]),
                             ("duplicate groups", [", ".join(group) for group in report["duplicate_groups"]])):
            print(f"{title}: {len(items)}")
            for item in items[:SHOWN]:
                print(f"  {item}")
            if len(items) > SHOWN:
                print(f"  ... and {len(items) - SHOWN} more (--json lists all)")
        print(f"labels outside 0..{report['classes'] - 1}: {report['labels_out_of_range']}")
        empty = report["empty_identity_names"]  # folders, or labels for a pack or a list
        shown = ", ".join(empty[:SHOWN]) + (f" and {len(empty) - SHOWN} more" if len(empty) > SHOWN else "")
        print(f"identities without images: {len(empty)}" + (f" ({shown})" if empty else ""))
        print("OK" if report["ok"] else "PROBLEMS FOUND")
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
