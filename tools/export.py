"""Export a trained backbone to ONNX or TorchScript for deployment, then check the written file
against PyTorch on random inputs at batch sizes 1 and --batch-check.

    python tools/export.py --checkpoint runs/ir50/backbone.pt --format onnx ir50.onnx
    python tools/export.py --checkpoint ir100_ms1mv3.pt --format torchscript ir100.pt

The checkpoint is a backbone file (backbone.pt, or tools/convert_weights.py's output), a training
checkpoint.pt, or a plain state_dict with --backbone and --embedding-size (evaluation/model_loading.py
reads them all). The export runs in eval mode and fp32.

What the exported model expects and returns:
- input `images`: float32 [N,3,112,112], N any batch size; RGB face crops aligned to 112x112,
  each pixel value x in 0..255 mapped to (x/255 - 0.5)/0.5, channels first;
- output `embeddings`: float32 [N,D], not L2-normalised; compare faces by cosine similarity.
This is also stored in the file: the ONNX model's doc_string and metadata_props, the TorchScript
archive's extra file metadata.json. ONNX uses operator set --opset (default 17).

Prints the largest |export - PyTorch| at each batch size and OK, or FAILED (exit status 1) when one
exceeds 1e-4 (fp32; relative to the largest |embedding| value where that is above 1).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime import run_cli  # noqa: E402
from evaluation.model_loading import load_backbone  # noqa: E402
from interop.export import DEFAULT_OPSET, FORMATS, TOLERANCE, export_and_check, within_tolerance  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="backbone.pt or checkpoint.pt of a train.py run, or a plain state_dict")
    parser.add_argument("--backbone", help="network to build, overriding the checkpoint's (needed for a "
                                           "plain state_dict)")
    parser.add_argument("--embedding-size", type=int,
                        help="embedding width, overriding the checkpoint's (needed for a plain state_dict)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX operator set")
    parser.add_argument("--batch-check", type=int, default=4,
                        help="batch size checked besides 1, to prove the batch axis is dynamic")
    parser.add_argument("out", help="file to write (.onnx, or .pt for TorchScript)")
    args = parser.parse_args(argv)
    if args.batch_check < 2:
        parser.error(f"--batch-check {args.batch_check}: must be at least 2 (batch 1 is always checked)")
    model, name, embedding_size = load_backbone(args.checkpoint, args.backbone, args.embedding_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    differences = export_and_check(model, name, embedding_size, args.format, args.out, args.opset,
                                   batch_sizes=(1, args.batch_check))
    print(f"{name} ({embedding_size}-d) -> {args.out} ({args.format})")
    passed = True
    for batch, (difference, scale) in differences.items():
        passed &= within_tolerance(difference, scale)
        print(f"batch {batch}: max |{args.format} - PyTorch| = {difference:.2e}, "
              f"max |embedding| = {scale:.3g}")
    print(f"tolerance {TOLERANCE:.0e} x max(1, max |embedding|): {'OK' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
