"""The benchmark tools run end to end (tiny sizes: they check that the tools work, not speed)."""

import json
import os
import statistics
import subprocess
import sys

import pytest
import torch

from backbone.layers import PATH_CHOICES, cpu_paths
from runtime import resolve_precision

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_benchmark_reports_throughput_and_flops(tmp_path):
    csv_path = tmp_path / "bench.csv"
    result = run_json("tools/bench/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "4", "--num-classes", "50",
                      "--device", "cpu", "--steps", "2", "--warmup", "1", "--csv", str(csv_path), "--json",
                      "--default-allocator")
    assert result["images_per_second"] > 0 and result["gmacs_per_image"] == 0.221
    assert result["recycling_allocator"] is False
    assert result["dtype"] == resolve_precision("auto", torch.device("cpu"))  # train.py's default
    assert result["tflops"] > 0 and result["loader"] == "device-resident"
    assert csv_path.read_text().splitlines()[0].startswith("backbone,head,batch_size")
    assert_reports_the_cpu(result)
    assert result["cpu_paths"] == ";".join(f"{kind}={path}" for kind, path in cpu_paths().items())


def assert_reports_the_cpu(report):
    from runtime.cpu import cpu_features
    here = cpu_features()
    for key in ("cpu_model", "cpu_amx_bf16", "cpu_avx512_bf16", "cpu_onednn_bf16", "cpu_avx512f",
                "torch_cpu_capability", "onednn", "cpp_compiler"):
        assert report[key] == here[key], key
    assert report["threads"] == 1  # OMP_NUM_THREADS=1 in run_json


@pytest.mark.slow
def test_training_benchmark_takes_the_forced_cpu_paths():
    forced = {"prelu_backward": "ops", "batchnorm_prelu": "stock", "pointwise_conv": "matmul",
              "strided_depthwise_conv": "bf16_stride1_backward", "global_depthwise_conv": "fp32"}
    result = run_json("tools/bench/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "2", "--num-classes", "10",
                      "--device", "cpu", "--dtype", "bf16", "--steps", "1", "--warmup", "0", "--json", "--cpu-paths",
                      ",".join(f"{kind}={path}" for kind, path in forced.items()))
    assert result["cpu_paths"] == ";".join(f"{kind}={path}" for kind, path in forced.items())
    assert result["images_per_second"] > 0
    # PReLU's backward path applies to an fp32 step as well, so it can be forced there alone.
    result = run_json("tools/bench/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "2", "--num-classes", "10",
                      "--device", "cpu", "--dtype", "fp32", "--steps", "1", "--warmup", "0", "--json", "--cpu-paths",
                      "prelu_backward=ops")
    assert result["dtype"] == "fp32" and result["cpu_paths"].startswith("prelu_backward=ops;")


@pytest.mark.slow
def test_training_benchmark_refuses_a_csv_with_other_columns_by_name(tmp_path):
    csv_path = tmp_path / "old.csv"
    csv_path.write_text("backbone,images_per_second\nir50,1.0\n")
    result = subprocess.run([sys.executable, "tools/bench/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "2",
                             "--num-classes", "10", "--device", "cpu", "--steps", "1", "--warmup", "0", "--json",
                             "--csv", str(csv_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and f"--csv {csv_path}: its columns (backbone,images_per_second)" in result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"] > 0  # the figures are not lost
    assert csv_path.read_text() == "backbone,images_per_second\nir50,1.0\n"


@pytest.mark.slow
def test_training_benchmark_through_the_real_loader_and_sharded_head(tmp_path):
    from dataset import write_record_pack
    from dataset.synthetic import SyntheticFaces
    faces = SyntheticFaces(seed=1)
    write_record_pack(tmp_path, ((faces.render(i // 4, i % 4), i // 4) for i in range(16)), num_classes=4)
    result = run_json("tools/bench/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "4", "--num-classes", "4",
                      "--device", "cpu", "--steps", "2", "--warmup", "1", "--loader", f"rec:{tmp_path}",
                      "--workers", "1", "--sharded-head", "--sample-rate", "0.5", "--json")
    assert result["loader"] == f"rec:{tmp_path}" and result["images_per_second"] > 0
    assert result["recycling_allocator"] is (sys.platform.startswith("linux"))


@pytest.mark.slow
def test_old_step_baseline_compares_both_steps():
    result = run_json("tools/bench/baseline_old_step.py", "--rows", "mobilefacenet:4", "--num-classes", "50",
                      "--steps", "1", "--warmup", "0", "--rounds", "2", "--json")
    assert [row["backbone"] for row in result["rows"]] == ["mobilefacenet"]
    default = resolve_precision("auto", torch.device("cpu"))  # the rule: the tests run FACE_CPU_CHOICES=rule
    for row in result["rows"]:  # each figure the median of its rounds, each speedup the median of the rounds' ratios
        rounds = row["rounds"]
        assert len(rounds) == 2 and row["old_fp32"] == pytest.approx(statistics.median(r["old_fp32"] for r in rounds),
                                                                     abs=0.011)
        assert row["ours_fp32_speedup"] == pytest.approx(
            statistics.median(r["ours_fp32"] / r["old_fp32"] for r in rounds), rel=0.01, abs=0.011)
        assert row["default_precision"] == default and row["default_speedup"] == row[f"ours_{default}_speedup"]
        assert row["old_fp32"] > 0 and row[f"ours_{default}_speedup"] > 0 and row["ours_fp32_speedup"] > 0
        assert ("ours_bf16" in row) is (default == "bf16")  # where bf16 is slow, only --slow-bf16 times it
    assert_reports_the_cpu(result["cpu"])
    assert result["cpu_paths"] == cpu_paths()


def test_old_step_columns_follow_the_default_precision():
    from tools.bench.baseline_old_step import chosen_variants
    common = ["old_fp32", "old_fp32_recycling_allocator", "ours_fp32"]
    assert chosen_variants("bf16", compile=True, slow_bf16=False) == common + ["ours_bf16", "ours_bf16_compile"]
    assert chosen_variants("fp32", compile=True, slow_bf16=False) == common + ["ours_fp32_compile"]
    assert chosen_variants("fp32", compile=False, slow_bf16=True) == common + ["ours_bf16"]


def test_old_step_gets_torch_s_stock_layers_everywhere():
    from backbone import build_backbone
    from backbone.layers import DepthwiseConv2d, PointwiseConv2d, PReLU
    from tools.bench.baseline_old_step import with_stock_layers
    for name in ("mobilefacenet", "ir18", "vit_t"):
        model = with_stock_layers(build_backbone(name, 64))
        assert not any(isinstance(m, (PReLU, DepthwiseConv2d, PointwiseConv2d)) for m in model.modules()), name


@pytest.mark.slow
def test_layer_benchmark_times_every_path_and_names_the_chosen_one():
    result = run_json("tools/bench/benchmark_layers.py", "--repeats", "1", "--json")
    assert [row["layer"] for row in result["rows"]] == (
        ["prelu backward"] * 3 + ["batchnorm+prelu forward+backward"] * 3 + ["pointwise conv forward+backward"] * 6
        + ["stride-2 depthwise forward+backward"] * 3 + ["global depthwise forward+backward"])
    kinds = {"batchnorm+prelu forward+backward": "batchnorm_prelu",
             "pointwise conv forward+backward": "pointwise_conv",
             "stride-2 depthwise forward+backward": "strided_depthwise_conv",
             "global depthwise forward+backward": "global_depthwise_conv"}
    for row in result["rows"]:
        assert all(ms > 0 for ms in row["ms"].values()) and row["fastest"] in row["ms"] and row["chosen"] in row["ms"]
        if row["layer"] in kinds:
            assert tuple(row["ms"]) == PATH_CHOICES[kinds[row["layer"]]]
            assert row["chosen"] == cpu_paths()[kinds[row["layer"]]]
        else:  # PReLU's backward: torch's own beside both of ours
            assert tuple(row["ms"]) == ("stock",) + PATH_CHOICES["prelu_backward"]
            assert row["chosen"] == cpu_paths()["prelu_backward"]
    assert_reports_the_cpu(result["cpu"])


@pytest.mark.slow
def test_loader_benchmark_runs_on_a_fresh_pack():
    result = run_json("tools/bench/benchmark_loader.py", "--images", "60", "--passes", "1", "--workers", "1",
                      "--batch-size", "16", "--json")
    assert result["images"] == 60 and result["single_process_images_per_second"] > 0


@pytest.mark.slow
def test_benchmark_tools_refuse_bad_arguments_by_name():
    for args, message in ((["tools/bench/benchmark_layers.py", "--repeats", "0"], "--repeats: must be a positive integer, got 0"),
                          (["tools/bench/benchmark.py", "--device", "cpu", "--steps", "0"], "--steps: must be a positive integer, got 0"),
                          (["tools/bench/benchmark.py", "--device", "cpu", "--cpu-paths", "global_depthwise_conv=fp16"],
                           "--cpu-paths item 'global_depthwise_conv=fp16': unknown global_depthwise_conv path 'fp16'; "
                           "valid: bf16, fp32"),
                          (["tools/bench/benchmark.py", "--device", "cpu", "--dtype", "fp32", "--cpu-paths",
                            "prelu_backward=ops,global_depthwise_conv=fp32"],
                           "--cpu-paths: global_depthwise_conv apply to a CPU step in bf16, and this one runs in "
                           "fp32 on cpu (--dtype fp32); give --device cpu --dtype bf16"),
                          (["tools/bench/baseline_old_step.py", "--rows", "mobilefacenet"], "--rows item 'mobilefacenet'"),
                          (["tools/bench/baseline_old_step.py", "--rows", "nonet:4"], "--rows item 'nonet:4'")):
        result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
