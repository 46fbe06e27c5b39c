"""deploy/cpp: `make cpp` builds the C++ tools, and they reproduce Python on the same crops.

One MobileFaceNet is compiled once for the module (tools/model/export.py --format aoti, which also checks
the package against eager PyTorch at batch 1 and 7) and the C++ build is done once (`make cpp`,
incremental after the first). Then:
- face_embed's embeddings equal Python's on the same package (<= 1e-5 absolute, fp32), and eager
  PyTorch's within the export tolerance;
- face_compare's cosine and verdict equal tools/model/compare_faces.py's (its own scoring code, run on the
  package and on the checkpoint);
- every bad input (model, crops, command line) is refused in one line with a non-zero exit.
Without a C++ compiler the C++ tests skip with make's reason; tools/data/pack_crops.py is tested anyway.
"""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import torch

from backbone import build_backbone
from evaluation.features import extract_embeddings
from evaluation.model_loading import load_backbone
from runtime.artifacts import backbone_file
from interop.export import aoti_runner, example_input, within_tolerance
from runtime import DataFormatError, UsageError
from tools.model import compare_faces
from tools.model.export import main as export_main
from tools.data.pack_crops import main as pack_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, "build", "cpp")  # where `make cpp` builds (git-ignored)
CXX = os.environ.get("CXX", "g++")  # make's default C++ compiler, which the Makefile checks
EMBEDDING_SIZE = 128
STORED_THRESHOLD = 0.25
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the two shared cores: one thread each side


def calibrated_backbone(name: str, embedding_size: int) -> torch.nn.Module:
    """Random weights at a trained network's scales: every BatchNorm's statistics measured on a batch
    of 16 random images (the final BatchNorm1d's too, so that embeddings are O(1), as a trained
    network's are), and each residual branch's last BN (`bn3`) small, as training leaves it (see
    tests/test_export.py's random_backbone)."""
    torch.manual_seed(0)
    model = build_backbone(name, embedding_size)
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for layer_name, norm in norms:
            norm.momentum = None
            if layer_name.endswith("bn3"):
                norm.weight.uniform_(0.1, 0.3)
        model.train()(example_input(16, seed=100))
    for _, norm in norms:
        norm.momentum = 0.1
    return model.eval()


class PackageNetwork(torch.nn.Module):
    """A .pt2 package run from Python, as a module: evaluation/features.py and compare_faces.py's
    own code then embed with it exactly as they embed with a checkpoint."""

    def __init__(self, path):
        super().__init__()
        self.run = aoti_runner(path)

    def forward(self, images):
        return self.run(images)


def run_tool(*args, check=True):
    result = subprocess.run([*map(str, args)], capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def export_package(name: str, folder, threshold=None):
    """(package path, checkpoint path, what tools/model/export.py printed) of a calibrated network."""
    checkpoint = folder / f"{name}.pt"
    torch.save(backbone_file(name, EMBEDDING_SIZE, calibrated_backbone(name, EMBEDDING_SIZE).state_dict()),
               checkpoint)
    package = folder / "exports" / f"{name}.pt2"  # a folder that does not exist yet
    printed = io.StringIO()
    options = ["--threshold", str(threshold)] if threshold is not None else []
    with contextlib.redirect_stdout(printed):
        status = export_main(["--checkpoint", str(checkpoint), "--format", "aoti", *options, str(package)])
    assert status == 0, printed.getvalue()
    return package, checkpoint, printed.getvalue()


# ============ fixtures: the build and the package, once per module ============

@pytest.fixture(scope="module")
def tools():
    """{name: path} of the three tools, built by `make cpp` (the venv is never rebuilt here: -o)."""
    if shutil.which(CXX) is None:
        pytest.skip(f"no C++ compiler ('{CXX}' not found): make cpp cannot build the C++ tools")
    if shutil.which("make") is None:
        pytest.skip("no make: the C++ tools are built by `make cpp`")
    result = subprocess.run(["make", "-o", ".venv/.installed", "cpp"], cwd=REPO, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {name: os.path.join(BUILD, name) for name in ("face_embed", "face_compare", "face_benchmark")}


@pytest.fixture(scope="module")
def mobilefacenet(tmp_path_factory):
    """(package, checkpoint, export output) of one MobileFaceNet, compiled once for the module."""
    if shutil.which(CXX) is None:
        pytest.skip(f"no C++ compiler ('{CXX}' not found): AOTInductor cannot compile the package")
    return export_package("mobilefacenet", tmp_path_factory.mktemp("package"), STORED_THRESHOLD)


def random_crops(count: int, seed: int) -> np.ndarray:
    """Smooth random 'faces': noise blurred and upsampled, uint8 RGB, so that nearby crops differ a little."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (count, 14, 14, 3), dtype=np.uint8)
    return np.stack([cv2.resize(image, (112, 112), interpolation=cv2.INTER_CUBIC) for image in small])


# ============ the export ============

@pytest.mark.slow
def test_the_aoti_export_is_checked_at_batch_1_and_7_and_carries_its_versions(mobilefacenet):
    package, _, printed = mobilefacenet
    lines = printed.strip().splitlines()
    assert lines[0].endswith(f"{package} (aoti, cpu)")
    assert lines[1].startswith("batch 1: max |aoti - PyTorch| = ") and lines[2].startswith("batch 7: ")
    assert lines[-1].endswith("OK")
    with zipfile.ZipFile(package) as archive:
        names = [n for n in archive.namelist() if n.endswith("_metadata.json")]
        metadata = json.loads(archive.read(names[0]))
    assert metadata["torch_version"] == torch.__version__ and metadata["AOTI_DEVICE_KEY"] == "cpu"
    assert metadata["backbone"] == "mobilefacenet" and metadata["embedding_size"] == str(EMBEDDING_SIZE)
    assert float(metadata["threshold"]) == STORED_THRESHOLD and "(x/255 - 0.5)/0.5" in metadata["images"]


@pytest.mark.slow
def test_the_package_takes_any_batch_size(mobilefacenet):
    run = aoti_runner(mobilefacenet[0])
    for batch in (1, 3, 16):
        assert tuple(run(example_input(batch)).shape) == (batch, EMBEDDING_SIZE)


# ============ face_embed ============

@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_face_embed_equals_python_on_the_same_crops(tools, mobilefacenet, tmp_path, flip):
    package, checkpoint, _ = mobilefacenet
    crops = random_crops(9, seed=1)
    np.save(tmp_path / "crops.npy", crops)
    out = tmp_path / "out" / "embeddings.npy"
    result = run_tool(tools["face_embed"], package, tmp_path / "crops.npy", "--out", out, "--batch-size", 4,
                      *(["--flip"] if flip else []))
    assert f"written by torch {torch.__version__}" in result.stderr  # the version check, said in one line
    cpp = np.load(out)
    assert cpp.dtype == np.float32 and cpp.shape == (9, EMBEDDING_SIZE)
    buffer = io.BytesIO()
    np.save(buffer, cpp)
    assert out.read_bytes() == buffer.getvalue()  # the file is byte for byte what np.save writes

    def python(model):
        plain, mirrored = extract_embeddings(model, crops, batch_size=4, device="cpu", flip=flip, progress=False)
        return plain + mirrored if flip else plain

    # The same package from Python, batch for batch (evaluation/features.py's preprocessing and flip).
    same_package = python(PackageNetwork(package))
    assert np.abs(cpp - same_package).max() <= 1e-5
    # Eager PyTorch on the checkpoint: within the export's tolerance (Inductor's fused kernels round
    # differently), on embeddings of a trained network's scale.
    eager = python(load_backbone(checkpoint)[0])
    scale = np.abs(eager).max()
    print(f"flip={flip}: max |C++ - package from Python| = {np.abs(cpp - same_package).max():.3g}, "
          f"max |C++ - eager| = {np.abs(cpp - eager).max():.3g}, max |embedding| = {scale:.3g}")  # docs/deploy-cpp.md
    assert 1 <= scale <= 20
    assert within_tolerance(np.abs(cpp - eager).max(), scale)


# ============ face_compare ============

def python_verdicts(model, crop_a, crop_b, threshold):
    """tools/model/compare_faces.py's own scoring of one pair of crops."""
    results = [{"a": "A", "b": "B", "key_a": "a", "key_b": "b"}]
    compare_faces.score(results, {"a": crop_a, "b": crop_b}, model, "cpu", threshold)
    return results[0]


@pytest.mark.slow
def test_face_compare_reproduces_compare_faces(tools, mobilefacenet, tmp_path):
    package, checkpoint, _ = mobilefacenet
    crops = random_crops(2, seed=2)
    similar = np.clip(crops[0].astype(int) + np.random.default_rng(3).integers(-6, 7, crops[0].shape), 0, 255)
    np.save(tmp_path / "a.npy", crops[0])                                   # [112,112,3]
    np.save(tmp_path / "a2.npy", similar.astype(np.uint8)[None])            # [1,112,112,3]
    np.save(tmp_path / "b.npy", crops[1][None])
    package_network, eager = PackageNetwork(package), load_backbone(checkpoint)[0]
    cosines = []
    for a, b, crop_a, crop_b in (("a.npy", "a2.npy", crops[0], similar.astype(np.uint8)),
                                 ("a.npy", "b.npy", crops[0], crops[1])):
        reference = python_verdicts(package_network, crop_a, crop_b, 0.0)["cosine"]
        for threshold in (reference - 0.01, reference + 0.01):
            expected = python_verdicts(package_network, crop_a, crop_b, threshold)
            result = run_tool(tools["face_compare"], package, tmp_path / a, tmp_path / b, "--threshold", threshold,
                              "--json")
            pair = json.loads(result.stdout)["pairs"][0]
            # The tool runs on one thread (CHILD_ENV), this process on two: oneDNN sums in another order.
            assert abs(pair["cosine"] - expected["cosine"]) <= 1e-6
            assert pair["same"] == expected["same"] == (threshold < reference)
        assert abs(pair["cosine"] - python_verdicts(eager, crop_a, crop_b, 0.0)["cosine"]) <= 1e-5
        cosines.append(pair["cosine"])
    assert cosines[0] > 0.9 > cosines[1]  # a crop and its slightly noisy copy; two different crops

    # Without --threshold: the one stored by tools/model/export.py --threshold, said where it came from.
    result = run_tool(tools["face_compare"], package, tmp_path / "a.npy", tmp_path / "a2.npy")
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"threshold: cosine {STORED_THRESHOLD:.4f} (stored in {package} by tools/model/export.py --threshold)"
    assert lines[1] == f"{tmp_path / 'a.npy'}  {tmp_path / 'a2.npy'}  cosine {cosines[0]:.4f}: same person"


# ============ bad inputs: one line each, non-zero exit ============

def rewritten_package(package, folder, change) -> str:
    """A copy of the package whose metadata `change` edits (as another torch or machine would write it)."""
    copy = folder / f"changed_{len(os.listdir(folder))}.pt2"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("_metadata.json"):
                metadata = json.loads(data)
                change(metadata)
                data = json.dumps(metadata).encode()
            target.writestr(info.filename, data)
    return copy


def cpu_flags() -> set:
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        return {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.slow
def test_every_bad_input_is_refused_in_one_line(tools, mobilefacenet, tmp_path):
    package = mobilefacenet[0]
    good = tmp_path / "good.npy"
    np.save(good, random_crops(2, seed=4))
    np.save(tmp_path / "single.npy", random_crops(1, seed=5))
    np.save(tmp_path / "float.npy", random_crops(2, seed=4).astype(np.float32))
    np.save(tmp_path / "gray.npy", random_crops(2, seed=4)[..., 0])
    np.save(tmp_path / "chw.npy", random_crops(2, seed=4).transpose(0, 3, 1, 2).copy())
    np.save(tmp_path / "empty.npy", np.zeros((0, 112, 112, 3), np.uint8))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(random_crops(2, seed=4)))
    (tmp_path / "truncated.npy").write_bytes(good.read_bytes()[:-1000])
    (tmp_path / "longer.npy").write_bytes(good.read_bytes() + b"\0" * 16)
    (tmp_path / "text.npy").write_text("left right\n")
    (tmp_path / "garbage.pt2").write_bytes(os.urandom(4096))
    (tmp_path / "cut.pt2").write_bytes(package.read_bytes()[:len(package.read_bytes()) // 2])
    old = rewritten_package(package, tmp_path, lambda m: m.update(torch_version="2.13.0+cpu"))
    foreign = rewritten_package(package, tmp_path, lambda m: m.pop("torch_version"))
    embed, compare = tools["face_embed"], tools["face_compare"]
    out = ["--out", tmp_path / "e.npy"]
    cases = [  # (command, status, what the line says)
        ([embed, tmp_path / "missing.pt2", good, *out], 1, "missing.pt2: model package not found"),
        ([embed, tmp_path / "garbage.pt2", good, *out], 1, "garbage.pt2: not an AOTInductor .pt2 package, or a damaged"),
        ([embed, tmp_path / "cut.pt2", good, *out], 1, "cut.pt2: not an AOTInductor .pt2 package, or a damaged one"),
        ([embed, good, good, *out], 1, "good.npy: not an AOTInductor .pt2 package"),
        ([embed, old, good, *out], 1, f"written by torch 2.13.0+cpu, but these tools run libtorch "
                                      f"{torch.__version__.split('+')[0]}, and a .pt2 package loads only into"),
        ([embed, foreign, good, *out], 1, "its metadata names no torch_version"),
        ([embed, package, tmp_path / "missing.npy", *out], 1, "missing.npy: file not found"),
        ([embed, package, tmp_path / "text.npy", *out], 1, "text.npy: not a .npy file"),
        ([embed, package, tmp_path / "float.npy", *out], 1, "float.npy: dtype float32, expected uint8 crops"),
        ([embed, package, tmp_path / "gray.npy", *out], 1, "gray.npy: shape (2, 112, 112), expected (N, 112, 112, 3)"),
        ([embed, package, tmp_path / "chw.npy", *out], 1, "chw.npy: shape (2, 3, 112, 112), expected (N, 112, 112, 3)"),
        ([embed, package, tmp_path / "single.npy", *out], 0, None),
        ([embed, package, tmp_path / "empty.npy", *out], 1, "empty.npy: holds no crop"),
        ([embed, package, tmp_path / "fortran.npy", *out], 1, "fortran.npy: stored in Fortran order"),
        ([embed, package, tmp_path / "truncated.npy", *out], 1, "truncated.npy: truncated: its header promises "
                                                                "75264 bytes of data (uint8 (2, 112, 112, 3)), "
                                                                "the file holds 74264"),
        ([embed, package, tmp_path / "longer.npy", *out], 1, "longer.npy: 16 bytes after the data its header"),
        ([embed, package, good], 2, "face_embed: error: --out EMB.npy is required; usage: face_embed MODEL.pt2"),
        ([embed, package, good, *out, "--batch-size", "0"], 2, "--batch-size 0: must be in 1..65536"),
        ([embed, package, good, *out, "--flips"], 2, "unknown option --flips (valid: --flip, --help, --out, "),
        ([compare, package, good, tmp_path / "single.npy"], 1, "good.npy: holds 2 crops; face_compare compares one"),
        ([compare, package, tmp_path / "single.npy"], 2, "expected MODEL.pt2, A.npy and B.npy, got 2 positional"),
        ([compare, package, tmp_path / "single.npy", tmp_path / "single.npy", "--threshold", "1.5"], 2,
         "--threshold 1.5: must lie in [-1, 1]"),
        ([compare, package, tmp_path / "single.npy", tmp_path / "single.npy", "--threshold", "high"], 2,
         "--threshold high: not a number"),
    ]
    if "amx_tile" not in cpu_flags():  # a package compiled on a machine with AMX, run on this one
        amx = rewritten_package(package, tmp_path, lambda m: m.update(AOTI_CPU_ISA="AVX512 AVX512_VNNI AMX_TILE"))
        cases.append(([embed, amx, good, *out], 1, "compiled for the CPU instruction set AVX512 AVX512_VNNI "
                                                   "AMX_TILE, and this CPU lacks amx-tile"))
    if not torch.cuda.is_available():
        cuda = rewritten_package(package, tmp_path, lambda m: m.update(AOTI_DEVICE_KEY="cuda"))
        cases.append(([embed, cuda, good, *out], 1, "a CUDA package (exported with --device cuda), and no CUDA GPU"))
    for command, status, message in cases:
        result = run_tool(*command, check=False)
        assert result.returncode == status, (command, result.stderr)
        if message is None:
            continue
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)
        assert result.stderr.startswith("error: " if status == 1 else f"{os.path.basename(command[0])}: error: ")
        assert message in result.stderr, (command, result.stderr)
    assert not (tmp_path / "e.npy.partial").exists()


def test_make_cpp_without_a_compiler_says_so_in_one_line(tmp_path):
    result = subprocess.run(["make", "-s", "-o", ".venv/.installed", "cpp", "CXX=no-such-c++",
                             f"CPP_BUILD={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and not os.listdir(tmp_path)
    assert result.stdout.strip() == ("make cpp: no C++ compiler ('no-such-c++' not found): install g++, or set CXX "
                                     "to a C++ compiler")


# ============ IR-50, a second network (slow: its compile takes minutes) ============

@pytest.mark.slow
def test_face_embed_equals_python_for_ir50(tools, tmp_path):
    package, checkpoint, printed = export_package("ir50", tmp_path)
    assert printed.rstrip().endswith("OK")
    crops = random_crops(3, seed=6)
    np.save(tmp_path / "crops.npy", crops)
    run_tool(tools["face_embed"], package, tmp_path / "crops.npy", "--out", tmp_path / "e.npy", "--flip")
    cpp = np.load(tmp_path / "e.npy")
    plain, mirrored = extract_embeddings(PackageNetwork(package), crops, batch_size=64, device="cpu", progress=False)
    assert np.abs(cpp - (plain + mirrored)).max() <= 1e-5
    plain, mirrored = extract_embeddings(load_backbone(checkpoint)[0], crops, batch_size=64, device="cpu",
                                         progress=False)
    assert within_tolerance(np.abs(cpp - (plain + mirrored)).max(), np.abs(plain + mirrored).max())


# ============ tools/data/pack_crops.py ============

def test_pack_crops_packs_a_folder_in_sorted_order_and_names_the_rows(tmp_path, capsys):
    crops = random_crops(3, seed=7)
    (tmp_path / "crops" / "bob").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "crops" / "bob" / "1.png"), cv2.cvtColor(crops[1], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "crops" / "alice.png"), cv2.cvtColor(crops[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "crops" / "carol.jpg"), cv2.cvtColor(crops[2], cv2.COLOR_RGB2BGR))
    (tmp_path / "crops" / "notes.txt").write_text("not an image")
    pack_main([str(tmp_path / "crops"), str(tmp_path / "out" / "crops.npy"), "--quiet"])
    packed = np.load(tmp_path / "out" / "crops.npy")
    assert packed.dtype == np.uint8 and packed.shape == (3, 112, 112, 3)
    names = (tmp_path / "out" / "crops.txt").read_text().splitlines()
    assert [os.path.relpath(n, tmp_path / "crops") for n in names] == ["alice.png", "bob/1.png", "carol.jpg"]
    assert (packed[0] == crops[0]).all() and (packed[1] == crops[1]).all()  # PNG: lossless, and RGB
    jpeg = cv2.cvtColor(cv2.imread(str(tmp_path / "crops" / "carol.jpg")), cv2.COLOR_BGR2RGB)
    assert (packed[2] == jpeg).all()
    assert "uint8 [3, 112, 112, 3]" in capsys.readouterr().out

    # One file: one crop, [1,112,112,3].
    pack_main([str(tmp_path / "crops" / "alice.png"), str(tmp_path / "alice.npy"), "--quiet"])
    assert np.load(tmp_path / "alice.npy").shape == (1, 112, 112, 3)


def test_pack_crops_refuses_what_is_not_an_aligned_crop(tmp_path):
    cv2.imwrite(str(tmp_path / "big.png"), np.zeros((120, 100, 3), np.uint8))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    # As a command: one line, non-zero exit, nothing written.
    result = subprocess.run([sys.executable, "tools/data/pack_crops.py", str(tmp_path / "big.png"), str(tmp_path / "o.npy"),
                             "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == (f"error: {tmp_path / 'big.png'}: 120x100 pixels, expected a "
                                                        "112x112 aligned crop (tools/data/align_faces.py makes them; "
                                                        "--resize resizes)\n")
    for sources, error, message in (
            (["broken.jpg"], DataFormatError, "broken.jpg, whole file: payload of 13 bytes is not a decodable image"),
            (["nowhere"], DataFormatError, "nowhere: no such file or folder"),
            (["big.png", "o.pt"], UsageError, "o.pt: the output's name must end in .npy")):
        arguments = [str(tmp_path / name) for name in sources] + ([] if len(sources) == 2 else [str(tmp_path / "o.npy")])
        with pytest.raises(error, match=message.replace(".", "\\.").replace("(", "\\(")):
            pack_main([*arguments, "--quiet"])
    assert not (tmp_path / "o.npy").exists()
    pack_main([str(tmp_path / "big.png"), str(tmp_path / "o.npy"), "--resize", "--quiet"])
    assert np.load(tmp_path / "o.npy").shape == (1, 112, 112, 3)


# ============ tools/bench/benchmark_deploy.py ============

@pytest.mark.slow
def test_the_deployment_benchmark_times_all_five_engines(tools, mobilefacenet, tmp_path):
    """Tiny settings: it checks that the tool runs every engine, not speed. The module's package is
    put where the tool looks for its own, which it then reuses instead of compiling one."""
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copy(mobilefacenet[0], exports / f"mobilefacenet-{EMBEDDING_SIZE}-cpu.pt2")
    result = subprocess.run([sys.executable, "tools/bench/benchmark_deploy.py", "--backbones", "mobilefacenet",
                             "--embedding-size", str(EMBEDDING_SIZE), "--runs", "1", "--warmup", "0",
                             "--throughput-batch", "2", "--threads", "1", "--exports", str(exports),
                             "--cpp-tools", BUILD, "--json"],
                            cwd=REPO, capture_output=True, text=True, env=CHILD_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"reusing {exports / f'mobilefacenet-{EMBEDDING_SIZE}-cpu.pt2'}" in result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert [row["engine"] for row in rows] == ["eager", "torchscript", "aoti_python", "aoti_cpp", "onnxruntime"]
    for row in rows:
        assert row["latency_ms_batch1"] > 0 and row["images_per_second_batch2"] > 0, row
        assert row["threads"] == 1 and row["torch"] == torch.__version__ and row["runs"] == 1
