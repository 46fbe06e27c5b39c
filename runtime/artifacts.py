"""Files that outlive a process, and the checkpoint format: one writer, one reader, one error type.

Writing: every file a crash must not leave half written (checkpoints, .bin and .rec packs, feature
.npz files, progress and settings files, crops) goes through `atomic_file`: the content is written to
`<path>.<pid>.partial` in the same folder, flushed and fsynced, renamed over `path`, and the folder
is fsynced so that the rename itself survives a power cut. A reader therefore sees the old file or
the new one, never a mixture; a `.partial` left by a kill is not a file any reader looks for.
`check_writable` tells, before a command's expensive part, whether this user could write a file or
folder there at all (the one-line refusal every entry point gives for an output it cannot write).

Reading: `load_torch_file` (torch.load with weights_only=True: a checkpoint can hold no code) and
`open_npz` (np.load without pickles; large matrices as `MappedRows`, read a block of rows at a
time). Every problem with a file read or checked here is an `ArtifactError` naming the file.

The checkpoint format, shared by train.py (which writes it), the eval scripts, fine-tuning and the
weight converter (which read it). Three layouts are accepted:
- `checkpoint.pt` of a train.py run: {"backbone": state_dict, "head": ..., "config": {"backbone":
  NAME, "embedding_size": D, ...}, ...};
- `backbone.pt` (`backbone_file`): {"backbone": NAME, "embedding_size": D, "state_dict": state_dict,
  "config": ...};
- a plain state_dict (parameter name -> tensor), e.g. `torch.save(model.state_dict(), path)`; a
  uniform "module." prefix (what DataParallel and DistributedDataParallel add) is removed.
Loading is strict (`check_fit`): every key of the network must be in the file with the same shape
and nothing else may be, so a checkpoint never half-loads into the wrong network.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zipfile

import numpy as np
import torch

from .errors import DataFormatError, UsageError, listed

PARTIAL_SUFFIX = ".partial"  # a file being written; no reader of this repository opens such a name
_SHOWN_KEYS = 4  # offending keys named in a mismatch message


class ArtifactError(DataFormatError):
    """A file is missing, not in its format, damaged, or (a checkpoint) does not fit the network asked for."""


# ============ writing ============

def partial_path(path) -> str:
    """Where `path` is written before it is renamed into place: same folder, unique to this process."""
    return f"{os.fspath(path)}.{os.getpid()}{PARTIAL_SUFFIX}"


def _fsync_folder(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders: the rename is as durable as it gets there
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def commit(temporary, path, keep_previous=None) -> None:
    """Make the finished file `temporary` durable and rename it over `path`, then fsync the folder.
    With `keep_previous`, the file `path` held until now is renamed to that name first (a fallback
    that is never missing: at every moment `path` or `keep_previous` holds a complete file)."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    if keep_previous is not None and os.path.exists(path):
        os.replace(path, keep_previous)
    os.replace(temporary, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb", keep_previous=None):
    """A handle to write `path` through: the file appears complete when the block ends without an
    error, and not at all (the old one stays) when it raises. The folder is created if needed.
    `mode` is "wb" or "w" (text, UTF-8); `keep_previous` as in `commit`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode {mode!r}; valid: wb, w")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = partial_path(path)
    try:
        with open(temporary, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
        commit(temporary, path, keep_previous)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def user_cache_folder() -> str:
    """This project's folder in the user's cache, ``$XDG_CACHE_HOME/face_pytorch`` (default
    ``~/.cache``): what a process measures or builds for this machine and later processes reuse."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "face_pytorch")


def why_unwritable(path, folder: bool = False) -> str | None:
    """Why this user could not write `path` (a file, or with `folder` a folder to write files into),
    or None when it can: an existing `path` must be a file (or a folder, with `folder`), and the
    nearest folder that exists at or above where it goes must be one this user may write and enter
    (atomic_file creates the folders below it, and renames its temporary file beside `path`)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path) != folder and os.path.exists(path):
        return "is a folder, not a file" if not folder else "is a file, not a folder"
    existing = path if folder else os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} cannot be written by this user"
    return None


def check_writable(path, what: str, folder: bool = False, instead: str = "") -> None:
    """A UsageError in one line unless this user can write `path` (why_unwritable): `what` names it
    (an option, or what the default is), `instead` says what the user can do about it. For checking
    every output of a command before its expensive part starts."""
    problem = why_unwritable(path, folder)
    if problem is not None:
        shown = os.fspath(path)
        raise UsageError(f"{what} {shown}: {problem}" + (f"; {instead}" if instead else ""))


def atomic_save(obj, path, keep_previous=None) -> None:
    """torch.save through atomic_file."""
    with atomic_file(path, keep_previous=keep_previous) as handle:
        torch.save(obj, handle)


def save_npz(path, **arrays) -> None:
    """An .npz under exactly `path` (np.savez would append .npz to other names), through atomic_file."""
    with atomic_file(path) as handle:
        np.savez(handle, **arrays)


# ============ reading ============

def load_torch_file(path, map_location="cpu", mmap: bool = False):
    """torch.load with weights_only=True (a checkpoint can hold no code); a missing, truncated or
    foreign file is an ArtifactError naming it. With `mmap` the tensors are mapped from the file, not
    read: a process that uses some rows of a large tensor reads only those (a sharded head's resume)."""
    if not os.path.isfile(path):
        raise ArtifactError(path, "checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # torch.load raises many types for foreign, truncated or code-holding files
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else ""
        raise ArtifactError(path, f"not a PyTorch checkpoint, or a damaged one ({type(error).__name__}: "
                                  f"{first_line})") from None


class MappedRows:
    """A float [N, D] array inside a file at `offset`, read a block of rows at a time: rows lying
    close together are read as one span of the file, others through a memory map that is closed
    again at once (so the pages read never stay in this process's resident memory)."""

    def __init__(self, path, offset: int, dtype, shape: tuple, fortran: bool):
        self.path, self.offset, self.dtype, self.shape, self.fortran = path, offset, np.dtype(dtype), shape, fortran

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        if rows.size and not self.fortran:
            low, high = int(rows.min()), int(rows.max()) + 1
            if high - low <= 2 * rows.size + 64:
                span = np.empty((high - low, self.shape[1]), dtype=self.dtype)
                with open(self.path, "rb") as handle:
                    handle.seek(self.offset + low * span.strides[0])
                    if handle.readinto(memoryview(span).cast("B")) != span.nbytes:
                        raise ArtifactError(self.path, "the file ends before its last row")
                return span[rows - low]
        mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                           order="F" if self.fortran else "C")
        try:
            return mapped[rows]  # a copy (fancy indexing), not a view of the map
        finally:
            del mapped


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip member's local header: signature ... name and extra lengths


def _zip_member(path, archive: zipfile.ZipFile, key: str, map_rows: bool):
    """The archive's array `key`; with `map_rows`, a matrix stored uncompressed as MappedRows."""
    info = archive.getinfo(f"{key}.npy")
    if map_rows and info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            handle.seek(info.header_offset)
            signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if signature == b"PK\x03\x04":
                handle.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
                version = np.lib.format.read_magic(handle)
                reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = reader(handle)
                if not dtype.hasobject and len(shape) == 2:
                    return MappedRows(path, handle.tell(), dtype, shape, fortran)
    with archive.open(info) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


def open_npz(path, required: tuple, optional: tuple = (), mapped: tuple = ()) -> dict:
    """{key: array} of an .npz holding every `required` key (and whichever `optional` ones it has).
    The `mapped` keys, when the archive stores them uncompressed as matrices (what save_npz and
    np.savez write), come back as MappedRows and are never loaded whole: IJB-C's features are
    almost 2 GB."""
    if not os.path.isfile(path):
        raise ArtifactError(path, "features file not found")
    try:
        with zipfile.ZipFile(path) as archive:  # an .npz is a zip of .npy members, as np.load reads it
            keys = {name[:-4] for name in archive.namelist() if name.endswith(".npy")}
            missing = [key for key in required if key not in keys]
            if missing:
                raise ArtifactError(path, f"no array {', '.join(missing)} in the archive (it holds "
                                          f"{', '.join(sorted(keys)) or 'nothing'}; needed: {', '.join(required)})")
            return {key: _zip_member(path, archive, key, key in mapped) for key in required + optional if key in keys}
    except ArtifactError:
        raise
    except Exception as error:  # zipfile and numpy raise several types for non-zip or damaged files
        raise ArtifactError(path, f"not a readable .npz archive ({type(error).__name__}: {error})") from None


# ============ the checkpoint format ============

def backbone_file(name: str, embedding_size: int, state_dict: dict, config: dict | None = None) -> dict:
    """The backbone-only checkpoint (`backbone.pt`) that every eval script reads."""
    return {"backbone": name, "embedding_size": embedding_size,
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "config": config or {}}


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(key, str) and torch.is_tensor(tensor) for key, tensor in value.items())


def read_backbone_weights(path) -> tuple[dict, str | None, int | None]:
    """(state_dict, stored backbone name or None, stored embedding size or None) of a file in any of
    the three layouts."""
    content = load_torch_file(path)
    if isinstance(content, dict) and _is_state_dict(content.get("state_dict")):
        return content["state_dict"], content.get("backbone"), content.get("embedding_size")
    if isinstance(content, dict) and _is_state_dict(content.get("backbone")):
        config = content.get("config") if isinstance(content.get("config"), dict) else {}
        return content["backbone"], config.get("backbone"), config.get("embedding_size")
    if _is_state_dict(content):
        if all(key.startswith("module.") for key in content):
            content = {key[len("module."):]: tensor for key, tensor in content.items()}
        return content, None, None
    found = f"a dict with keys {listed(map(repr, content), 8)}" if isinstance(content, dict) else \
        f"a {type(content).__name__}"
    raise ArtifactError(path, f"not a checkpoint: expected a train.py checkpoint.pt, a backbone.pt or a "
                              f"state_dict of tensors, found {found}")


def check_fit(state_dict: dict, model: torch.nn.Module, path, description: str) -> None:
    """Raise ArtifactError naming the first offending keys unless `state_dict` fits `model` exactly."""
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
        raise ArtifactError(path, f"does not fit {description}: {'; '.join(problems)} "
                                  "(check --backbone and --embedding-size)")
