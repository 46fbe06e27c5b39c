"""A checkpoint file -> the backbone network it holds, in eval mode, for the eval scripts.

Three layouts are accepted (training/checkpoint.py writes the first two):
- ``checkpoint.pt`` of a train.py run: {"backbone": state_dict, "head": ..., "config": {"backbone":
  NAME, "embedding_size": D, ...}, ...};
- ``backbone.pt``: {"backbone": NAME, "embedding_size": D, "state_dict": state_dict, "config": ...};
- a plain state_dict (parameter name -> tensor), e.g. ``torch.save(model.state_dict(), path)``; its
  network and width must then be given. A uniform "module." prefix (what DataParallel and
  DistributedDataParallel add) is removed.

Files are read with ``torch.load(weights_only=True)``: a checkpoint can hold no code. Loading is
strict: every key of the network must be in the file with the same shape and nothing else may be,
so a checkpoint never half-loads into the wrong network.
"""

from __future__ import annotations

import torch

from backbone import BACKBONES, build_backbone
from runtime import DataFormatError, listed, load_torch_file

_SHOWN_KEYS = 4  # offending keys named in a mismatch message


class CheckpointError(DataFormatError):
    """A checkpoint file is missing, not a checkpoint, or does not fit the network asked for."""


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and torch.is_tensor(tensor) for key, tensor in value.items())


def read_checkpoint(path) -> tuple[dict, str | None, int | None]:
    """(state_dict, stored backbone name or None, stored embedding size or None) of any accepted layout."""
    try:
        content = load_torch_file(path)
    except DataFormatError as error:
        raise CheckpointError(error.path, error.problem) from None
    if isinstance(content, dict) and _is_state_dict(content.get("state_dict")):
        return content["state_dict"], content.get("backbone"), content.get("embedding_size")
    if isinstance(content, dict) and _is_state_dict(content.get("backbone")):
        config = content.get("config") if isinstance(content.get("config"), dict) else {}
        return content["backbone"], config.get("backbone"), config.get("embedding_size")
    if _is_state_dict(content):
        keys = list(content)
        if all(key.startswith("module.") for key in keys):
            content = {key[len("module."):]: tensor for key, tensor in content.items()}
        return content, None, None
    found = f"a dict with keys {listed(map(repr, content), 8)}" if isinstance(content, dict) else \
        f"a {type(content).__name__}"
    raise CheckpointError(path, f"not a checkpoint: expected a train.py checkpoint.pt, a backbone.pt or a "
                                f"state_dict of tensors, found {found}")


def check_fit(state_dict: dict, model: torch.nn.Module, path, description: str) -> None:
    """Raise CheckpointError naming the first offending keys unless `state_dict` fits `model` exactly."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [f"{key} {list(state_dict[key].shape)} vs {list(tensor.shape)}"
                  for key, tensor in expected.items() if key in state_dict and state_dict[key].shape != tensor.shape]
    problems = []
    if missing:
        problems.append(f"missing keys {listed(missing, _SHOWN_KEYS)}")
    if unexpected:
        problems.append(f"unexpected keys {listed(unexpected, _SHOWN_KEYS)}")
    if mismatched:
        problems.append(f"shape mismatch (file vs network) {listed(mismatched, _SHOWN_KEYS)}")
    if problems:
        raise CheckpointError(path, f"does not fit {description}: {'; '.join(problems)} "
                                    "(check --backbone and --embedding-size)")


def load_backbone(path, backbone: str | None = None, embedding_size: int | None = None,
                  device="cpu") -> tuple[torch.nn.Module, str, int]:
    """(network in eval mode on `device`, its name, its embedding size) from a checkpoint file.

    `backbone` and `embedding_size` override what the file stores; a plain state_dict needs both.
    """
    state_dict, stored_name, stored_size = read_checkpoint(path)
    name = backbone or stored_name
    size = embedding_size or stored_size
    if name is None or size is None:
        raise CheckpointError(path, "the file does not say which network it holds (a plain state_dict?): "
                                    f"pass --backbone NAME (valid: {', '.join(sorted(BACKBONES))}) and "
                                    "--embedding-size D")
    if name not in BACKBONES:
        source = "--backbone" if backbone else "the checkpoint"
        raise CheckpointError(path, f"{source} names backbone {name!r}, which is unknown; "
                                    f"valid: {', '.join(sorted(BACKBONES))}")
    model = build_backbone(name, int(size))
    check_fit(state_dict, model, path, f"backbone {name} with embedding size {size}")
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval(), name, int(size)


def backbone_file(name: str, embedding_size: int, state_dict: dict, config: dict | None = None) -> dict:
    """The backbone-only checkpoint format every eval script reads."""
    return {"backbone": name, "embedding_size": embedding_size,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "config": config or {}}
