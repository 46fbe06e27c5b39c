"""Inference speed of a face network deployed five ways: per-image latency at batch 1 and throughput
at batch 32, for eager PyTorch, TorchScript, AOTInductor from Python, AOTInductor from C++
(build/cpp/face_benchmark, built by `make cpp`) and ONNX Runtime.

    python tools/bench/benchmark_deploy.py                                    # mobilefacenet and ir50, CPU
    python tools/bench/benchmark_deploy.py --backbones mobilefacenet --threads 1 --runs 50 --json
    python tools/bench/benchmark_deploy.py --device cuda                      # ONNX Runtime: CPU only here

Every engine runs the same network (seeded random weights: speed does not depend on them) on the
same normalised input, already on the device; each timed call ends with the embeddings on the
CPU. Latency is the median time of a batch-1 call; throughput is the batch size over the median
time of a batch-32 call. Each engine runs --warmup untimed calls first. --threads sets the threads
of every engine (torch.set_num_threads, OMP_NUM_THREADS for the C++ tool, onnxruntime's intra-op
threads); by default each engine takes its own default (one per core).

The exports go to --exports (default runs/benchmark_deploy) as BACKBONE-D.{pt,onnx,pt2}; a .pt2
package written by this torch for the same network and device is reused, since the AOTInductor
compile takes minutes (delete the folder to compile afresh). An engine that cannot run here (no
C++ build, no CUDA provider for ONNX Runtime) is listed as skipped with the reason.
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import zipfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository root
from backbone import BACKBONES, build_backbone  # noqa: E402
from interop.export import (aoti_runner, example_input, export_aoti, export_onnx, export_torchscript,  # noqa: E402
                            model_metadata, onnx_runner, torchscript_runner)
from runtime import UsageError, check_writable, positive_int, resolve_device, run_cli  # noqa: E402
from runtime.cpu import cpu_features  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
ENGINES = ("eager", "torchscript", "aoti_python", "aoti_cpp", "onnxruntime")


def package_metadata(path) -> dict:
    """The metadata an AOTInductor package stores (empty if the file is not one)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("_metadata.json"))
            return json.loads(archive.read(name))
    except (OSError, zipfile.BadZipFile, StopIteration, ValueError):
        return {}


def aoti_package(model, name: str, embedding_size: int, device: str, folder: str) -> tuple[str, bool]:
    """(path of the .pt2 package of `model`, whether an earlier run's was reused)."""
    path = os.path.join(folder, f"{name}-{embedding_size}-{device}.pt2")
    stored = package_metadata(path) if os.path.isfile(path) else {}
    wanted = {"backbone": name, "embedding_size": str(embedding_size), "torch_version": torch.__version__,
              "AOTI_DEVICE_KEY": device}
    if stored and all(stored.get(key) == value for key, value in wanted.items()):
        return path, True
    export_aoti(model, path, model_metadata(name, embedding_size), device)
    return path, False


def time_calls(call, images, warmup: int, runs: int, device) -> list[float]:
    """Seconds of each of `runs` calls after `warmup` untimed ones (a CUDA device is synchronised first)."""
    with torch.inference_mode():
        for _ in range(warmup):
            call(images)
        seconds = []
        for _ in range(runs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            call(images)  # returns CPU tensors: a CUDA call has finished when it returns
            seconds.append(time.perf_counter() - start)
    return seconds


def cpp_seconds(tool: str, package: str, batch_size: int, warmup: int, runs: int, threads: int | None) -> list[float]:
    """face_benchmark's seconds per call (the same input preparation; the network's time only)."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    result = subprocess.run([tool, package, "--batch-size", str(batch_size), "--warmup", str(warmup),
                             "--runs", str(runs)], capture_output=True, text=True, env=env, timeout=3600)
    if result.returncode != 0:
        raise UsageError(f"{tool} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def engine_runners(model, name, args, device, folder) -> dict:
    """{engine: a function of the device-resident input, or the reason it is skipped}."""
    embedding_size = args.embedding_size
    metadata = model_metadata(name, embedding_size)
    runners = {}
    if "eager" in args.engines:
        runners["eager"] = lambda images: model(images).cpu()
    if "torchscript" in args.engines:
        path = os.path.join(folder, f"{name}-{embedding_size}.pt")
        export_torchscript(model.cpu(), path, metadata)
        model.to(device)
        runners["torchscript"] = torchscript_runner(path, str(device))
    if {"aoti_python", "aoti_cpp"} & set(args.engines):
        path, reused = aoti_package(model, name, embedding_size, device.type, folder)
        print(f"{name}: {'reusing' if reused else 'compiled'} {path}", file=sys.stderr)
        if "aoti_python" in args.engines:
            runners["aoti_python"] = aoti_runner(path, str(device))
        if "aoti_cpp" in args.engines:
            tool = os.path.join(args.cpp_tools, "face_benchmark")
            runners["aoti_cpp"] = ("cpp", tool, path) if os.path.isfile(tool) else \
                f"skipped: no {tool} (build the C++ tools with `make cpp`)"
    if "onnxruntime" in args.engines:
        if device.type != "cpu":
            runners["onnxruntime"] = "skipped: ONNX Runtime runs on the CPU here (onnxruntime has no CUDA provider)"
        else:
            path = os.path.join(folder, f"{name}-{embedding_size}.onnx")
            export_onnx(model, path, metadata)
            runners["onnxruntime"] = onnx_runner(path, args.threads)
    return runners


def measure(model, name, args, device, folder, environment) -> list[dict]:
    rows = []
    runners = engine_runners(model, name, args, device, folder)
    inputs = {batch: example_input(batch, seed=batch).to(device) for batch in (1, args.throughput_batch)}
    for engine in args.engines:
        runner = runners[engine]
        row = {"backbone": name, "embedding_size": args.embedding_size, "engine": engine, **environment}
        if isinstance(runner, str):
            rows.append({**row, "skipped": runner})
            continue
        for batch, images in inputs.items():
            if isinstance(runner, tuple):
                seconds = cpp_seconds(runner[1], runner[2], batch, args.warmup, args.runs, args.threads)
            else:
                seconds = time_calls(runner, images, args.warmup, args.runs, device)
            median = statistics.median(seconds)
            if batch == 1:
                row["latency_ms_batch1"] = round(1000 * median, 3)
            else:
                row[f"images_per_second_batch{batch}"] = round(batch / median, 1)
        rows.append(row)
    return rows


def table(rows: list[dict], throughput_batch: int) -> str:
    header = (f"| backbone | engine | latency, batch 1 (ms per image) | throughput, batch {throughput_batch} "
              f"(images/s) |\n|---|---|---:|---:|")
    lines = [header]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['backbone']} | {row['engine']} | {row['skipped']} | |")
        else:
            lines.append(f"| {row['backbone']} | {row['engine']} | {row['latency_ms_batch1']:.2f} | "
                         f"{row[f'images_per_second_batch{throughput_batch}']:.1f} |")
    return "\n".join(lines)


def engine_list(text: str) -> list[str]:
    engines = [e for e in text.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {', '.join(unknown) or '(none given)'}; valid: "
                                         f"{', '.join(ENGINES)}")
    return engines


def backbone_list(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in BACKBONES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backbone(s) {', '.join(unknown) or '(none given)'}; valid: "
                                         f"{', '.join(sorted(BACKBONES))}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", type=backbone_list, default=["mobilefacenet", "ir50"])
    parser.add_argument("--embedding-size", type=positive_int, default=512)
    parser.add_argument("--engines", type=engine_list, default=list(ENGINES), help=f"from {', '.join(ENGINES)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=positive_int, help="threads of every engine (default: each its own)")
    parser.add_argument("--throughput-batch", type=positive_int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=positive_int, default=20)
    parser.add_argument("--exports", default=os.path.join("runs", "benchmark_deploy"),
                        help="folder for the exported files (a matching .pt2 there is reused)")
    parser.add_argument("--cpp-tools", default=os.path.join(REPO, "build", "cpp"),
                        help="folder of the C++ tools (make cpp)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: must be 0 or more")
    if args.throughput_batch < 2:
        parser.error(f"--throughput-batch {args.throughput_batch}: must be at least 2 (batch 1 is the latency)")
    device = resolve_device(args.device)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: valid: cpu, cuda")
    check_writable(args.exports, "--exports", folder=True, instead="choose a folder you can write")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.exports, exist_ok=True)
    features = cpu_features()
    environment = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else features["cpu_model"],
                   "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
                   "date": datetime.date.today().isoformat(), "warmup": args.warmup, "runs": args.runs}
    rows = []
    for name in args.backbones:
        torch.manual_seed(0)
        model = build_backbone(name, args.embedding_size).eval().to(device)
        rows += measure(model, name, args, device, args.exports, environment)
    if args.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(f"{environment['device']}, {environment['threads']} threads, torch {environment['torch']}, "
              f"{environment['date']}; median of {args.runs} calls after {args.warmup} warm-up calls")
        print(table(rows, args.throughput_batch))


if __name__ == "__main__":
    run_cli(main)
