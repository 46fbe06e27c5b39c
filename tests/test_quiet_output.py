"""A normal run prints only what a user can act on: progress, results and real errors. No library
warning or compiler chatter reaches the terminal of train.py, the eval scripts or the tools.

CUDA_HOME points at an empty folder in these runs: on a machine without a CUDA runtime that makes
torch's C++ extension loader (imported when torch.compile builds the fused PReLU path) log "No CUDA
runtime is found", which runtime.cpu filters out; without the filter this test fails on any CPU."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r"^.*\d+%\|.*\|.*$")  # a tqdm bar, at any stage of its line


def run(tmp_path, *command: str) -> tuple[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_HOME": str(tmp_path / "cuda_home"),
           "PYTHONWARNINGS": "default"}  # every warning a library issues is shown, none hidden by Python's filters
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout, result.stderr


def unexpected_lines(stderr: str) -> list[str]:
    """The lines of stderr that are neither blank nor a progress bar."""
    return [line for line in re.split(r"[\r\n]", stderr) if line.strip() and not PROGRESS.match(line)]


@pytest.mark.slow
def test_training_evaluation_and_tools_print_no_warnings(tmp_path):
    (tmp_path / "cuda_home").mkdir()
    data, runs = tmp_path / "data", tmp_path / "runs"
    _, stderr = run(tmp_path, "tools/data/make_synthetic.py", str(data), "--identities", "12",
                    "--images-per-identity", "6", "--held-out-identities", "12", "--lfw-pairs", "60",
                    "--agedb-pairs", "60", "--cfp-pairs", "60", "--workers", "1")
    assert unexpected_lines(stderr) == []

    stdout, stderr = run(tmp_path, "train.py", "configs/demo.py", f"--train_data={data / 'train'}",
                         f"--val_dir={data}", f"--output_dir={runs}", "--max_steps=2", "--test_freq=2",
                         "--eval_at_start=false", "--visdom=false", "--workers=0", "--progress=false")
    assert stderr == ""
    assert '"stopped": "complete"' in stdout.splitlines()[-1]

    checkpoint = str(runs / "demo" / "backbone.pt")
    stdout, stderr = run(tmp_path, "eval_lfw.py", "--checkpoint", checkpoint, "--bin", str(data / "lfw.bin"),
                         "--roc", str(tmp_path / "roc.png"))
    assert unexpected_lines(stderr) == [] and "accuracy:" in stdout

    stdout, stderr = run(tmp_path, "tools/model/export.py", "--checkpoint", checkpoint, "--format", "torchscript",
                         str(tmp_path / "model.pt"))
    assert stderr == "" and stdout


def test_the_progress_filter_keeps_everything_else():
    bars = "eval lfw:   0%|          | 0/1 [00:00<?, ?batch/s]\r eval lfw: 100%|██████████| 1/1 [00:10<00:00]\n"
    warning = "W1207 cpp_extension.py:183] No CUDA runtime is found, using CUDA_HOME='/usr/local'"
    assert unexpected_lines(bars) == []
    assert unexpected_lines(bars + warning + "\n") == [warning]
