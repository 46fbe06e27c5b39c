"""The benchmark tools run end to end (tiny sizes: they check that the tools work, not speed)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(*args):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_training_benchmark_reports_throughput_and_flops(tmp_path):
    csv_path = tmp_path / "bench.csv"
    result = run_json("tools/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "4", "--num-classes", "50",
                      "--device", "cpu", "--steps", "2", "--warmup", "1", "--csv", str(csv_path), "--json",
                      "--default-allocator")
    assert result["images_per_second"] > 0 and result["gmacs_per_image"] == 0.221
    assert result["recycling_allocator"] is False
    assert result["tflops"] > 0 and result["loader"] == "device-resident"
    assert csv_path.read_text().splitlines()[0].startswith("backbone,head,batch_size")


def test_training_benchmark_through_the_real_loader_and_sharded_head(tmp_path):
    from dataset import write_record_pack
    from dataset.synthetic import SyntheticFaces
    faces = SyntheticFaces(seed=1)
    write_record_pack(tmp_path, ((faces.render(i // 4, i % 4), i // 4) for i in range(16)), num_classes=4)
    result = run_json("tools/benchmark.py", "--backbone", "mobilefacenet", "--batch-size", "4", "--num-classes", "4",
                      "--device", "cpu", "--steps", "2", "--warmup", "1", "--loader", f"rec:{tmp_path}",
                      "--workers", "1", "--sharded-head", "--sample-rate", "0.5", "--json")
    assert result["loader"] == f"rec:{tmp_path}" and result["images_per_second"] > 0
    assert result["recycling_allocator"] is (sys.platform.startswith("linux"))


def test_old_step_baseline_compares_both_steps():
    result = run_json("tools/baseline_old_step.py", "--rows", "mobilefacenet:4", "--num-classes", "50",
                      "--steps", "1", "--warmup", "1", "--json")
    row = result["rows"][0]
    assert row["backbone"] == "mobilefacenet" and row["old_fp32"] > 0
    assert row["ours_bf16_speedup"] > 0 and row["ours_fp32_speedup"] > 0


def test_layer_benchmark_times_stock_and_fast_layers():
    result = run_json("tools/benchmark_layers.py", "--repeats", "1", "--json")
    assert [row["layer"] for row in result["rows"]] == ["prelu backward"] * 3 + ["stride-2 depthwise forward+backward"] * 3
    assert all(row["stock_ms"] > 0 and row["ours_ms"] > 0 for row in result["rows"])


def test_loader_benchmark_runs_on_a_fresh_pack():
    result = run_json("tools/benchmark_loader.py", "--images", "60", "--passes", "1", "--workers", "1",
                      "--batch-size", "16", "--json")
    assert result["images"] == 60 and result["single_process_images_per_second"] > 0


def test_benchmark_tools_refuse_bad_arguments_by_name():
    for args, message in ((["tools/benchmark_layers.py", "--repeats", "0"], "--repeats: must be a positive integer, got 0"),
                          (["tools/benchmark.py", "--device", "cpu", "--steps", "0"], "--steps: must be a positive integer, got 0"),
                          (["tools/baseline_old_step.py", "--rows", "mobilefacenet"], "--rows item 'mobilefacenet'"),
                          (["tools/baseline_old_step.py", "--rows", "nonet:4"], "--rows item 'nonet:4'")):
        result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
