"""runtime.native: a kernel source built once per machine into the user's cache, reused, rebuilt when
the source changes, and a one-line error where it cannot build."""

import ctypes
import os

import pytest

from backbone.layers import BATCHNORM_PRELU_SOURCE
from runtime.cpu import inductor_cpp_compiler
from runtime.native import NativeBuildError, load_library

pytestmark = pytest.mark.skipif(not inductor_cpp_compiler(), reason="needs a C++ compiler")

SOURCE = 'extern "C" int answer(int x) { return 2 * x + %d; }\n'


def built(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".so"))


def test_a_source_is_built_once_into_the_cache_and_rebuilt_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "answer.cpp"
    source.write_text(SOURCE % 1)
    assert load_library(str(source)).answer(20) == 41
    folder = tmp_path / "cache" / "face_pytorch" / "native"
    first = built(folder)
    assert len(first) == 1 and first[0].startswith("answer-")
    stamp = os.stat(folder / first[0]).st_mtime_ns
    assert load_library(str(source)).answer(1) == 3
    assert built(folder) == first and os.stat(folder / first[0]).st_mtime_ns == stamp  # reused, not rebuilt
    source.write_text(SOURCE % 2)
    assert load_library(str(source)).answer(20) == 42
    assert len(built(folder)) == 2 and not [name for name in os.listdir(folder) if "partial" in name]


def test_a_source_that_does_not_build_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    source = tmp_path / "broken.cpp"
    source.write_text('extern "C" int answer(int x) { return x +; }\n')
    with pytest.raises(NativeBuildError) as caught:
        load_library(str(source))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"building {source} with ") and "error" in message
    assert not os.listdir(tmp_path / "cache" / "face_pytorch" / "native")  # no half-built library left


def test_a_cache_that_cannot_be_written_builds_for_this_process(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # under a file: no folder can be made
    source = tmp_path / "answer.cpp"
    source.write_text(SOURCE % 3)
    library = load_library(str(source))
    assert library.answer(0) == 3 and not os.path.exists(blocker / "cache")


def test_the_kernels_export_every_function_backbone_layers_calls(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    library = load_library(BATCHNORM_PRELU_SOURCE)
    for name in ("batchnorm_prelu_forward", "batchnorm_prelu_backward"):
        assert isinstance(getattr(library, name), ctypes._CFuncPtr)
