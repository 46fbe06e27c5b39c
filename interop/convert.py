"""Turn published face-recognition checkpoints into this repository's backbone-only checkpoints.

Sources and the networks they map onto are in `interop.published_layouts` (insightface arcface_torch
iresnet and ViT checkpoints; TreB1eN InsightFace_Pytorch IR/IR-SE and MobileFaceNet checkpoints). Every
tensor is accounted for: a key the layout needs that the file lacks, a key of the file that the
layout does not use, or a shape that differs from ours is an error naming the key and the file.
The one exception is BN's `num_batches_tracked`, which files saved by PyTorch < 0.4.1 (as 2018
releases may be) lack: it counts training steps and plays no part in the eval-mode function, so a
missing one is left at 0. The embedding size is read from the file (512 for all published ones).
"""

import os

import torch

from backbone import build_backbone
from runtime import DataFormatError, UnknownName
from runtime.artifacts import atomic_save, backbone_file, read_backbone_weights

from .published_layouts import LAYOUTS

MAX_KEYS_LISTED = 12


def listed(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:MAX_KEYS_LISTED])
    return shown + (f" and {len(keys) - MAX_KEYS_LISTED} more" if len(keys) > MAX_KEYS_LISTED else "")


def layout_for(source: str, arch: str):
    if source not in LAYOUTS:
        raise UnknownName("weight source", source, LAYOUTS)
    if arch not in LAYOUTS[source]:
        raise UnknownName(f"{source} arch", arch, LAYOUTS[source])
    return LAYOUTS[source][arch]


def set_identity_norm(state: dict, model: torch.nn.Module, prefix: str) -> None:
    norm = model.get_submodule(prefix)
    state[f"{prefix}.weight"] = torch.ones_like(norm.weight)
    state[f"{prefix}.bias"] = torch.zeros_like(norm.bias)
    state[f"{prefix}.running_mean"] = torch.zeros_like(norm.running_mean)
    # eval-mode BN divides by sqrt(var + eps): this makes that 1
    state[f"{prefix}.running_var"] = torch.full_like(norm.running_var, 1.0 - norm.eps)
    state[f"{prefix}.num_batches_tracked"] = torch.zeros_like(norm.num_batches_tracked)


def set_identity_conv(state: dict, model: torch.nn.Module, prefix: str) -> None:
    conv = model.get_submodule(prefix)
    out_channels, in_channels, height, width = conv.weight.shape
    if (out_channels, height, width) != (in_channels, 1, 1) or conv.bias is not None:
        raise ValueError(f"{prefix} is not a square bias-free 1x1 conv; it cannot be the identity")
    state[f"{prefix}.weight"] = torch.eye(in_channels).reshape(out_channels, in_channels, 1, 1)


def convert_state_dict(source: str, arch: str, published: dict, origin="the checkpoint") -> tuple[int, dict]:
    """(embedding size, our state_dict for `arch`) from the `source` state_dict `published`;
    `origin` (the file) is named in errors."""
    build_layout, embedding_key = layout_for(source, arch)
    if embedding_key not in published:
        raise DataFormatError(origin, f"has no {embedding_key!r}, which every {source} {arch} "
                                      f"checkpoint holds; is it one?")
    embedding_size = published[embedding_key].shape[0]
    model = build_backbone(arch, embedding_size)
    layout = build_layout(model)
    target = model.state_dict()

    optional = {theirs for theirs in layout.renamed.values() if theirs.endswith("num_batches_tracked")}
    missing = [theirs for theirs in layout.renamed.values() if theirs not in published and theirs not in optional]
    extra = sorted(set(published) - set(layout.renamed.values()))
    if missing or extra:
        problems = [f"missing {len(missing)} key(s): {listed(missing)}"] if missing else []
        problems += [f"{len(extra)} unexpected key(s): {listed(extra)}"] if extra else []
        raise DataFormatError(origin, f"does not hold the {source} {arch} layout: {'; '.join(problems)}")
    mismatched = [f"{theirs} {tuple(published[theirs].shape)} (ours {ours} {tuple(target[ours].shape)})"
                  for ours, theirs in layout.renamed.items()
                  if theirs in published and published[theirs].shape != target[ours].shape]
    if mismatched:
        raise DataFormatError(origin, f"shapes differ from {source} {arch}'s: {listed(mismatched)}")

    converted = {}
    for ours, theirs in layout.renamed.items():
        # fp16 checkpoints become fp32; num_batches_tracked stays an integer
        converted[ours] = published[theirs].to(target[ours].dtype) if theirs in published else target[ours]
    for prefix in layout.identity_norms:
        set_identity_norm(converted, model, prefix)
    for prefix in layout.identity_convs:
        set_identity_conv(converted, model, prefix)
    model.load_state_dict(converted, strict=True)  # a layout that leaves a tensor of ours unset fails here
    return embedding_size, converted


def convert_file(source: str, arch: str, in_path, out_path) -> dict:
    """Convert the published checkpoint `in_path` and write our backbone file to `out_path`;
    returns what was written."""
    # read_backbone_weights takes a plain state_dict with weights_only=True and drops a "module." prefix
    # (a model saved inside DataParallel).
    published, _, _ = read_backbone_weights(in_path)
    embedding_size, state_dict = convert_state_dict(source, arch, published, in_path)
    content = backbone_file(arch, embedding_size, state_dict, config={
        "converted_from": {"source": source, "file": os.path.basename(str(in_path))}})
    atomic_save(content, out_path)
    return content
