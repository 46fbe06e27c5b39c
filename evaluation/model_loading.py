"""A checkpoint file -> the backbone network it holds, in eval mode, for the eval scripts and tools.

The file layouts and the strict fit check are the checkpoint format of `runtime.artifacts`; this
module adds what needs the backbone registry: building the named network and loading the weights
into it. A plain state_dict names no network, so its network and width must then be given.
"""

from __future__ import annotations

import torch

from backbone import BACKBONES, build_backbone
from runtime import UnknownName
from runtime.artifacts import ArtifactError, check_fit, read_backbone_weights


def load_backbone(path, backbone: str | None = None, embedding_size: int | None = None,
                  device="cpu") -> tuple[torch.nn.Module, str, int]:
    """(network in eval mode on `device`, its name, its embedding size) from a checkpoint file.

    `backbone` and `embedding_size` override what the file stores; a plain state_dict needs both.
    """
    state_dict, stored_name, stored_size = read_backbone_weights(path)
    name = backbone or stored_name
    size = embedding_size or stored_size
    if name is None or size is None:
        raise ArtifactError(path, "the file does not say which network it holds (a plain state_dict?): "
                                  f"pass --backbone NAME (valid: {', '.join(sorted(BACKBONES))}) and "
                                  "--embedding-size D")
    if name not in BACKBONES:
        raise UnknownName("backbone", name, sorted(BACKBONES),
                          where="--backbone" if backbone else str(path))
    model = build_backbone(name, int(size))
    check_fit(state_dict, model, path, f"backbone {name} with embedding size {size}")
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval(), name, int(size)
