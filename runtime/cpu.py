"""What this process's CPU offers: its model name, the instruction-set features the CPU fast paths
depend on, and torch's own view of them (vectorisation capability, oneDNN version, threads).

The features are read once per process. AMX counts only when the CPU has its bf16 tiles, torch sees
them and oneDNN is not capped below them by ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA),
so it answers the question that matters to us: will oneDNN run its AMX kernels here?
"""

import functools
import hashlib
import logging
import os
import platform
import re

import torch

CPUINFO = "/proc/cpuinfo"


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# torch.compile's CPU backend (the fused PReLU path) imports torch.utils.cpp_extension, which warns
# "No CUDA runtime is found, using CUDA_HOME=..." on every CPU machine where a CUDA toolkit folder
# exists: nothing for a CPU run to act on. Only that message of that logger is dropped.
logging.getLogger("torch.utils.cpp_extension").addFilter(_DropMessage("No CUDA runtime is found"))


def _first_values(text: str) -> dict[str, str]:
    """Each key of a /proc/cpuinfo text with its first non-empty value: the first processor's."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip():
            values.setdefault(key.strip(), value.strip())
    return values


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of the first processor listed in a /proc/cpuinfo text."""
    values = _first_values(text)
    flags = values.get("flags") or values.get("Features", "")  # x86; other architectures say "Features"
    return values.get("model name", ""), frozenset(flags.split())


@functools.lru_cache(maxsize=None)
def _cpuinfo_text() -> str:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:  # not Linux
        return ""


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = parse_cpuinfo(_cpuinfo_text())
    return model or platform.processor() or platform.machine(), flags


@functools.lru_cache(maxsize=None)
def cpu_identity() -> str:
    """The CPU model name with its family and model numbers and a digest of its feature flags: cloud
    machines often name every Xeon "Intel(R) Xeon(R) Processor", so the name alone does not tell kinds apart."""
    name, flags = _cpuinfo()
    values = _first_values(_cpuinfo_text())
    digest = hashlib.sha1(" ".join(sorted(flags)).encode()).hexdigest()[:8]
    return f"{name}, family {values.get('cpu family', '?')} model {values.get('model', '?')}, flags {digest}"


def onednn_isa_cap() -> str | None:
    """The ISA ceiling set for oneDNN in the environment, upper-cased, or None."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def _torch_says(name: str) -> bool | None:
    probe = getattr(torch.cpu, name, None)  # private helpers of torch.cpu; absent in some versions
    try:
        return bool(probe()) if probe is not None else None
    except RuntimeError:
        return None


def has_amx_bf16() -> bool:
    """True when oneDNN will run bf16 convolutions and matmuls on AMX tiles in this process."""
    _, flags = _cpuinfo()
    cap = onednn_isa_cap()
    if cap is not None and cap != "ALL" and "AMX" not in cap:
        return False
    torch_view = _torch_says("_is_amx_tile_supported")
    if flags:
        return "amx_bf16" in flags and "amx_tile" in flags and torch_view is not False
    return bool(torch_view)


def has_avx512_bf16() -> bool:
    _, flags = _cpuinfo()
    return "avx512_bf16" in flags if flags else bool(_torch_says("_is_avx512_bf16_supported"))


def has_onednn_bf16() -> bool:
    """True when torch runs bf16 convolutions and matmuls through oneDNN's vectorised kernels here
    (AVX-512 or AMX on x86, BF16 on ARM). Without them, on an AVX2-only CPU, bf16 autocast falls back
    to reference loops that are many times slower than fp32; torch's own probe decides."""
    if not torch.backends.mkldnn.is_available():
        return False
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private; absent in some versions
    try:
        return bool(probe()) if probe is not None else _avx512_core()
    except RuntimeError:
        return _avx512_core()


def _avx512_core() -> bool:
    _, flags = _cpuinfo()
    return {"avx512bw", "avx512vl", "avx512dq"} <= flags


def onednn_version() -> str:
    """oneDNN's version as torch was built with it (torch prints it as MKL-DNN or oneDNN)."""
    match = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\d.]+)", torch.__config__.show())
    return match.group(1) if match else "none"


@functools.lru_cache(maxsize=None)
def inductor_cpp_compiler() -> str:
    """The C++ compiler with which torch.compile's CPU backend (Inductor) would build kernels here
    ($CXX, else g++; Inductor's own search, which runs `--version`), or "" where it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an Inductor that cannot be imported here
        return ""


def cpu_features() -> dict:
    """The CPU facts a benchmark reports beside its figures (flat, so that a CSV row can hold it)."""
    model, flags = _cpuinfo()
    return {"cpu_model": model, "cpu_amx_bf16": has_amx_bf16(), "cpu_avx512_bf16": has_avx512_bf16(),
            "cpu_onednn_bf16": has_onednn_bf16(),
            "cpu_avx512f": "avx512f" in flags if flags else bool(_torch_says("_is_avx512_supported")),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn": onednn_version(),
            "onednn_max_cpu_isa": onednn_isa_cap() or "", "threads": torch.get_num_threads(),
            "cpp_compiler": inductor_cpp_compiler()}
