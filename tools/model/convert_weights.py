"""Convert a published face-recognition checkpoint into this repository's backbone file, which every
eval script and tools/model/export.py load.

    python tools/model/convert_weights.py --source insightface --arch ir100 backbone.pth ir100_ms1mv3.pt
    python tools/model/convert_weights.py --source insightface --arch vit_b model.pt vit_b_wf42m.pt
    python tools/model/convert_weights.py --source treb1en --arch ir_se50 model_ir_se50.pth ir_se50_treb1en.pt
    python tools/model/convert_weights.py --source treb1en --arch mobilefacenet model_mobilefacenet.pth mfn.pt

Sources: insightface arcface_torch `backbone.pth` of iresnet18/34/50/100/200 (--arch ir18/34/50/100/
200) and of its ViTs (--arch vit_t/s/b/l/h, the WebFace42M `_dp005_mask` variants included: same
weights layout); TreB1eN InsightFace_Pytorch `model_ir_se50.pth` (--arch ir_se50; its Backbone's
other depths and "ir" mode map onto ir50/100/152 and ir_se100/152) and `model_mobilefacenet.pth`
(--arch mobilefacenet, 512-d). interop/published_layouts.py says how each maps onto our networks. Every
tensor of the file is used and every one of ours filled; a missing or unexpected key or a shape that
differs is an error naming it. Both sources expect the input this repository uses: RGB 112x112,
(x/255 - 0.5)/0.5. The output's folder is created when it does not exist; an output this user could
not write is refused before the conversion starts.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

from runtime import UnknownName, check_writable, run_cli  # noqa: E402
from interop.convert import convert_file  # noqa: E402
from interop.published_layouts import LAYOUTS  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, choices=sorted(LAYOUTS), help="who published the file")
    parser.add_argument("--arch", required=True, help="our backbone name; per source: " + "; ".join(
        f"{source}: {', '.join(arches)}" for source, arches in LAYOUTS.items()))
    parser.add_argument("input", help="the published checkpoint (a state_dict .pth)")
    parser.add_argument("output", help="our backbone file to write (.pt)")
    args = parser.parse_args(argv)
    if args.arch not in LAYOUTS[args.source]:
        parser.error(str(UnknownName(f"{args.source} arch", args.arch, LAYOUTS[args.source], where="--arch")))
    # before the conversion: its folder is created when missing, but must be one this user can make
    check_writable(args.output, "output", instead="choose a file in a folder you can write")
    content = convert_file(args.source, args.arch, args.input, args.output)
    print(f"{args.input} ({args.source}) -> {args.output}: {content['backbone']}, "
          f"{content['embedding_size']}-d, {len(content['state_dict'])} tensors")


if __name__ == "__main__":
    run_cli(main)
