"""The lowest layer: how this process runs, decided in one place for every package and script above.

Device resolution, precision (autocast), the CPU allocator setting, the files that outlive a process
(`runtime.artifacts`: the one atomic writer, the one checkpoint/npz reader and the checkpoint format),
and the command-line helpers (the one-line user error and the entry-point wrapper). It imports no
other package of this repository.
"""

from .artifacts import (ArtifactError, atomic_file, atomic_save, check_writable, load_torch_file, open_npz, save_npz,
                        why_unwritable)
from .cli import positive_int, run_cli
from .device import DEVICES, keep_freed_cpu_memory, prepare_device, resolve_device
from .errors import DataFormatError, UnknownName, UsageError, UserError, listed
from .numeric import l2_normalize
from .precision import PRECISION_CHOICES, PRECISIONS, autocast_context, check_precision, resolve_precision

__all__ = [
    "DEVICES", "PRECISION_CHOICES", "PRECISIONS", "ArtifactError", "atomic_file", "atomic_save", "autocast_context",
    "check_precision", "check_writable", "DataFormatError", "keep_freed_cpu_memory", "l2_normalize", "listed",
    "load_torch_file", "open_npz", "positive_int", "prepare_device", "resolve_device", "resolve_precision", "run_cli", "save_npz",
    "UnknownName", "UsageError", "UserError", "why_unwritable",
]
