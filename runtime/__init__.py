"""The lowest layer: how this process runs, decided in one place for every package and script above.

Device resolution, precision (autocast), the CPU allocator setting, reading and writing checkpoint
files, and the command-line helpers (the one-line user error and the entry-point wrapper). It
imports no other package of this repository.
"""

from .cli import positive_int, run_cli
from .device import DEVICES, keep_freed_cpu_memory, resolve_device
from .errors import DataFormatError, UsageError, UserError, listed
from .files import atomic_save, load_torch_file, save_npz
from .numeric import l2_normalize
from .precision import PRECISION_CHOICES, PRECISIONS, autocast_context, check_precision, resolve_precision

__all__ = [
    "DEVICES", "PRECISION_CHOICES", "PRECISIONS", "DataFormatError", "UsageError", "UserError", "atomic_save",
    "autocast_context", "check_precision", "keep_freed_cpu_memory", "l2_normalize", "listed", "load_torch_file",
    "positive_int", "resolve_device", "resolve_precision", "run_cli", "save_npz",
]
