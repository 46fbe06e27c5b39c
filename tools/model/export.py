"""Export a trained backbone to ONNX, TorchScript or an AOTInductor package for deployment, then
check the written file against PyTorch on random inputs at batch sizes 1 and --batch-check (7).

    python tools/model/export.py --checkpoint runs/ir50/backbone.pt --format onnx ir50.onnx
    python tools/model/export.py --checkpoint ir100_ms1mv3.pt --format torchscript ir100.pt
    python tools/model/export.py --checkpoint runs/ir50/backbone.pt --format aoti ir50.pt2 [--device cuda]

The checkpoint is a backbone file (backbone.pt, or tools/model/convert_weights.py's output), a training
checkpoint.pt, or a plain state_dict with --backbone and --embedding-size (evaluation/model_loading.py
reads them all). The export runs in eval mode and fp32.

What the exported model expects and returns:
- input `images`: float32 [N,3,112,112], N any batch size; RGB face crops aligned to 112x112,
  each pixel value x in 0..255 mapped to (x/255 - 0.5)/0.5, channels first;
- output `embeddings`: float32 [N,D], not L2-normalised; compare faces by cosine similarity.
This is also stored in the file: the ONNX model's doc_string and metadata_props, the TorchScript
archive's extra file metadata.json, the .pt2 package's metadata (with the torch version that wrote
it). ONNX uses operator set --opset (default 17) and the TorchScript-based exporter (see
interop/export.py). --threshold T stores a verification threshold (a cosine) beside the network,
which deploy/cpp's face_compare uses when given none.

AOTInductor (--format aoti) compiles the network into native code for this machine: for its CPU
(the package needs a CPU with the same vector instructions) or, with --device cuda, for its GPU.
It takes minutes for the deep networks, and the package loads only into this torch version
(docs/deploy-cpp.md runs it from C++).

Prints the largest |export - PyTorch| at each batch size and OK, or FAILED (exit status 1) when one
exceeds 1e-4 (fp32; relative to the largest |embedding| value where that is above 1).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root

from runtime import check_writable, positive_int, run_cli  # noqa: E402
from evaluation.model_loading import load_backbone  # noqa: E402
from interop.export import (DEFAULT_OPSET, DEVICE_FORMATS, FORMATS, MAX_OPSET, MIN_OPSET, TOLERANCE,  # noqa: E402
                            check_aoti_request, export_and_check, within_tolerance)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="backbone.pt or checkpoint.pt of a train.py run, or a plain state_dict")
    parser.add_argument("--backbone", help="network to build, overriding the checkpoint's (needed for a "
                                           "plain state_dict)")
    parser.add_argument("--embedding-size", type=positive_int,
                        help="embedding width, overriding the checkpoint's (needed for a plain state_dict)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX operator set")
    parser.add_argument("--batch-check", type=int, default=7,
                        help="batch size checked besides 1, to prove the batch axis is dynamic")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help=f"what the package is compiled for ({', '.join(DEVICE_FORMATS)} only)")
    parser.add_argument("--threshold", type=float,
                        help="a verification threshold (a cosine) to store in the file, for face_compare")
    parser.add_argument("out", help="file to write (.onnx, .pt for TorchScript, .pt2 for aoti)")
    args = parser.parse_args(argv)
    if args.format == "onnx" and not MIN_OPSET <= args.opset <= MAX_OPSET:
        parser.error(f"--opset {args.opset}: valid: {MIN_OPSET}..{MAX_OPSET}")
    if args.batch_check < 2:
        parser.error(f"--batch-check {args.batch_check}: must be at least 2 (batch 1 is always checked)")
    if args.device != "cpu" and args.format not in DEVICE_FORMATS:
        parser.error(f"--device {args.device}: only --format {' or '.join(DEVICE_FORMATS)} compiles for a device")
    if args.threshold is not None and not -1 <= args.threshold <= 1:
        parser.error(f"--threshold {args.threshold}: a cosine similarity lies in [-1, 1]")
    check_writable(args.out, "OUT", instead="choose a file in a folder you can write")
    if args.format == "aoti":
        check_aoti_request(args.out, args.device)  # before the checkpoint loads
    model, name, embedding_size = load_backbone(args.checkpoint, args.backbone, args.embedding_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    differences = export_and_check(model, name, embedding_size, args.format, args.out, args.opset,
                                   batch_sizes=(1, args.batch_check), device=args.device, threshold=args.threshold)
    where = f", {args.device}" if args.format in DEVICE_FORMATS else ""
    print(f"{name} ({embedding_size}-d) -> {args.out} ({args.format}{where})")
    passed = True
    for batch, (difference, scale) in differences.items():
        passed &= within_tolerance(difference, scale)
        print(f"batch {batch}: max |{args.format} - PyTorch| = {difference:.2e}, "
              f"max |embedding| = {scale:.3g}")
    print(f"tolerance {TOLERANCE:.0e} x max(1, max |embedding|): {'OK' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
