"""CPU choices made by measuring (runtime.measured, backbone.cpu_choice): the fastest candidate wins only
by more than the margin over stock, the result is cached per CPU model, threads and torch version and
read back without measuring, `remeasure` measures again, `rule` measures nothing; train.py logs what it
chose with the times that chose it. Each test has a cache folder of its own."""

import json
import os
import subprocess
import sys

import pytest
import torch

from backbone.layers import PATH_CHOICES, _probed_paths
from runtime import UnknownName, measured

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def measuring(tmp_path, monkeypatch):
    """Mode `measure` with an empty cache in tmp_path; this process's decisions forgotten before and after."""
    _probed_paths.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(measured.MODE_VARIABLE, "measure")
    measured.forget()
    yield tmp_path
    measured.forget()
    _probed_paths.cache_clear()  # a layer's first bf16 pass here measured the paths: later tests take the rule


def counted(work):
    """A candidate that does `work` and counts its calls."""
    calls = []

    def run():
        calls.append(1)
        work()
    return run, calls


def matmuls(size, times):
    a = torch.randn(size, size)
    return lambda: [a @ a for _ in range(times)]


def test_pick_keeps_stock_unless_beaten_by_more_than_the_margin():
    assert measured.pick({"stock": 10.0, "other": 9.6}, "stock") == "stock"  # 4% faster: within the margin
    assert measured.pick({"stock": 10.0, "other": 9.4}, "stock") == "other"
    assert measured.pick({"stock": 10.0, "other": 12.0}, "stock") == "stock"
    assert measured.pick({"stock": 10.0, "a": 9.0, "b": 5.0}, "stock") == "b"


def test_a_choice_is_measured_once_cached_per_machine_and_remeasured_on_request(measuring, monkeypatch):
    slow, slow_calls = counted(matmuls(384, 8))
    fast, fast_calls = counted(matmuls(8, 1))
    record = measured.choose("family/test", {"stock": slow, "fast": fast}, stock="stock", rule="stock")
    assert record["choice"] == "fast" and record["how"] == "measured"
    assert record["ms"]["fast"] < record["ms"]["stock"] and len(slow_calls) == len(fast_calls) == 4  # 1 warm-up + 3
    with open(measured.cache_file(), encoding="utf-8") as handle:
        cache = json.load(handle)
    key = measured.machine_key()
    assert key.endswith(f"| {torch.get_num_threads()} threads | torch {torch.__version__}") and ", flags " in key
    assert cache[key]["family/test"]["choice"] == "fast" and cache[key]["family/test"]["ms"] == record["ms"]
    # A new process (decisions forgotten) reads the cache: nothing runs.
    measured.forget()
    again = measured.choose("family/test", {"stock": slow, "fast": fast}, stock="stock", rule="stock")
    assert again["choice"] == "fast" and again["how"] == "cached" and len(slow_calls) == 4
    assert measured.describe("family/test", again).startswith("family/test: fast (cached ")
    # remeasure: timed again, and the cache rewritten.
    monkeypatch.setenv(measured.MODE_VARIABLE, "remeasure")
    measured.forget()
    fresh = measured.choose("family/test", {"stock": slow, "fast": fast}, stock="stock", rule="stock")
    assert fresh["how"] == "measured" and len(slow_calls) == 8
    # rule: the fixed rule, nothing timed.
    monkeypatch.setenv(measured.MODE_VARIABLE, "rule")
    ruled = measured.choose("family/test", {"stock": slow, "fast": fast}, stock="stock", rule="stock")
    assert ruled["choice"] == "stock" and ruled["ms"] == {} and len(slow_calls) == 8
    monkeypatch.setenv(measured.MODE_VARIABLE, "fastest")
    with pytest.raises(UnknownName, match="unknown FACE_CPU_CHOICES 'fastest'; valid: measure, remeasure, rule"):
        measured.choose("family/test", {"stock": slow}, stock="stock", rule="stock")


def test_a_choice_measured_without_a_onednn_isa_cap_is_not_taken_under_one(measuring, monkeypatch):
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    slow, slow_calls = counted(matmuls(384, 8))
    fast, fast_calls = counted(matmuls(8, 1))
    assert measured.choose("family/cap", {"stock": slow, "fast": fast}, stock="stock", rule="stock")["choice"] == "fast"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert measured.machine_key().endswith(" | oneDNN capped at AVX2")
    measured.forget()
    again = measured.choose("family/cap", {"stock": slow, "fast": fast}, stock="stock", rule="stock")
    assert again["how"] == "measured" and len(slow_calls) == 8  # timed again for the capped oneDNN
    with open(measured.cache_file(), encoding="utf-8") as handle:
        assert len(json.load(handle)) == 2


def test_an_unreadable_cache_is_measured_again_and_rewritten(measuring):
    os.makedirs(os.path.dirname(measured.cache_file()))
    with open(measured.cache_file(), "w", encoding="utf-8") as handle:
        handle.write("{not json")
    run, calls = counted(matmuls(8, 1))
    assert measured.choose("family/x", {"stock": run}, stock="stock", rule="stock")["how"] == "measured"
    with open(measured.cache_file(), encoding="utf-8") as handle:
        assert json.load(handle)[measured.machine_key()]["family/x"]["choice"] == "stock"


@pytest.mark.slow
def test_the_layer_paths_and_the_precision_are_measured_never_slower_than_stock(measuring):
    from backbone.cpu_choice import layer_choice_lines, measured_cpu_paths, measured_precision
    paths = measured_cpu_paths()
    assert set(paths) == set(PATH_CHOICES) and all(paths[kind] in PATH_CHOICES[kind] for kind in paths)
    for family, record in measured.decided("layer/").items():
        kind = family.split("/", 1)[1]
        assert record["ms"][record["choice"]] <= record["ms"][PATH_CHOICES[kind][0]], record  # never slower than stock
    assert len(layer_choice_lines()) == len(measured.decided("layer/"))
    record = measured_precision("mobilefacenet", 128, 8)
    assert record["family"] == "precision/mobilefacenet-128/b8" and record["choice"] in ("fp32", "bf16")
    if record["ms"]:
        assert record["ms"][record["choice"]] <= record["ms"]["fp32"]


@pytest.mark.slow
def test_train_py_logs_the_measured_choice_and_then_reads_it_from_the_cache(measuring, tmp_path):
    from dataset import write_record_pack
    from dataset.synthetic import SyntheticFaces
    faces = SyntheticFaces(seed=3)
    write_record_pack(tmp_path / "pack", ((faces.render(i // 4, i % 4), i // 4) for i in range(16)), num_classes=4)
    env = {**os.environ, "XDG_CACHE_HOME": str(measuring), measured.MODE_VARIABLE: "measure"}

    def run(name):
        done = subprocess.run([sys.executable, "train.py", "--", f"--train_data={tmp_path / 'pack'}", "--val_sets=",
                               "--batch_size=8", "--max_steps=1", "--workers=0", f"--output_dir={tmp_path}",
                               f"--name={name}", "--visdom=false", "--progress=false", "--backbone=mobilefacenet",
                               "--embedding_size=128"], cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(tmp_path / name / "config.json", encoding="utf-8") as handle:
            precision = json.load(handle)["precision"]
        lines = [line for line in done.stdout.splitlines() if "cpu choice: " in line]
        return precision, lines
    precision, lines = run("first")
    assert precision in ("fp32", "bf16") and lines[0].split("cpu choice: ")[1].startswith(
        f"precision/mobilefacenet-128/b8: {precision} (")
    measured_now = "(measured " in lines[0] or "(no bf16 kernels" in lines[0]
    assert measured_now
    precision_again, lines_again = run("second")
    assert precision_again == precision
    assert "(cached " in lines_again[0] or "(no bf16 kernels" in lines_again[0]


def test_each_set_of_backbone_options_is_its_own_precision_family(tmp_path):
    """grad_checkpoint and dropout change the pass's speed: a run built with them is not given the plain
    network's measurement. train.py measures the backbone as it builds it."""
    from backbone.cpu_choice import measured_precision
    from config import Config
    from training.components import backbone_build_options, build_backbone_for
    cfg = Config(backbone="ir18", grad_checkpoint=True, dropout=0.2, output_dir=str(tmp_path))
    options = backbone_build_options(cfg)
    assert options == {"grad_checkpoint": True, "dropout": 0.2}
    assert build_backbone_for(cfg).grad_checkpoint
    record = measured_precision("ir18", 512, 8, options)  # the tests' mode: the rule, nothing timed
    assert record["family"] == "precision/ir18-512/b8/dropout=0.2/grad_checkpoint=True"
    assert measured_precision("ir18", 512, 8)["family"] == "precision/ir18-512/b8"
