"""The repository's hand-written C++ kernels (backbone/kernels/*.cpp), built at first use and loaded
with ctypes.

Each source is one file of `extern "C"` functions over raw pointers, with no torch headers, so it
builds quickly, with the C++ compiler torch.compile's CPU backend would use (runtime.cpu.
inductor_cpp_compiler) and `-O3 -march=native -fopenmp`. OpenMP resolves to the runtime torch has
already loaded (the same `libgomp.so.1`), so the kernels share torch's threads rather than adding a
second pool. A ctypes call releases the GIL and costs microseconds.

The library is cached in ``$XDG_CACHE_HOME/face_pytorch/native/`` (default ``~/.cache``) under a
digest of the source, the compiler and its version, the flags and the CPU (`-march=native` code
must not run on another kind of CPU sharing the same home folder); each build is written beside its
final name and renamed into place (runtime.artifacts), so ranks building at once do not see half a
file. A home that cannot be written gets the library built in a temporary folder for this process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile

from .artifacts import commit, partial_path, user_cache_folder
from .cpu import cpu_identity, inductor_cpp_compiler

FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300


class NativeBuildError(RuntimeError):
    """A kernel source could not be built or loaded here (no compiler, or the compiler failed)."""


def _compiler_version(compiler: str) -> str:
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def library_name(source: str, compiler: str, version: str) -> str:
    """`<stem>-<digest>.so`: the digest covers everything the built code depends on."""
    with open(source, "rb") as handle:
        text = handle.read()
    key = b"\0".join([text, compiler.encode(), version.encode(), " ".join(FLAGS).encode(), cpu_identity().encode()])
    stem = os.path.splitext(os.path.basename(source))[0]
    return f"{stem}-{hashlib.sha256(key).hexdigest()[:16]}.so"


def _build(source: str, compiler: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = partial_path(target)
    try:
        try:
            done = subprocess.run([compiler, *FLAGS, source, "-o", partial], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as error:
            raise NativeBuildError(f"building {source} with {compiler} failed: {error}") from None
        if done.returncode != 0 or not os.path.isfile(partial) or os.path.getsize(partial) == 0:
            output = (done.stderr or done.stdout or "").strip().splitlines()
            reason = ([line for line in output if "error" in line] or output or ["no library written"])[0]
            raise NativeBuildError(f"building {source} with {compiler} failed: {reason.strip()}")
        commit(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def load_library(source: str) -> ctypes.CDLL:
    """The kernels of `source` (a .cpp path) as a ctypes library: from the cache, or built now.
    Raises NativeBuildError (one line) where no compiler is found or the build fails."""
    compiler = inductor_cpp_compiler()
    if not compiler:
        raise NativeBuildError(f"no C++ compiler found to build {source} (set $CXX, or install g++)")
    name = library_name(source, compiler, _compiler_version(compiler))
    target = os.path.join(user_cache_folder(), "native", name)
    if not os.path.isfile(target):
        try:
            _build(source, compiler, target)
        except OSError:  # the cache folder cannot be written: build for this process only
            target = os.path.join(tempfile.mkdtemp(prefix="face_pytorch_native_"), name)
            _build(source, compiler, target)
    try:
        return ctypes.CDLL(target)
    except OSError as error:
        raise NativeBuildError(f"loading {target} failed: {error}") from None
