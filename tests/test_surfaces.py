"""The newer surfaces fail as well as the old ones: a fine-tune resumes without its initial-weights
file, a run folder that cannot be written is refused at start in one line, a ViT's bad options are
refused by the config, only rank 0 prints the summary, and a frozen backbone says when it starts to
learn. Runs are tiny (MobileFaceNet on a 24-image pack); subprocesses where an exit status, a user or a
process boundary matters."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

import train
from config import ConfigError, load_config
from dataset import write_record_pack
from dataset.synthetic import SyntheticFaces

from script_runs import run_script  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("surfaces")
    faces = SyntheticFaces(seed=6)
    write_record_pack(folder, ((faces.render(i // 4, i % 4), i // 4) for i in range(24)), num_classes=6)
    return folder


def args(pack, out_dir, name, *extra):
    return ["--", f"--train_data={pack}", "--val_sets=", "--batch_size=8", "--workers=0", f"--output_dir={out_dir}",
            f"--name={name}", "--visdom=false", "--progress=false", "--precision=fp32", "--lr=0.01", "--log_freq=1",
            "--test_freq=0", "--save_freq=1", "--embedding_size=32", *extra]


def log_text(run_dir) -> str:
    with open(os.path.join(run_dir, "log.txt"), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.slow
def test_a_fine_tune_resumes_after_its_initial_weights_file_is_gone(pack, tmp_path, one_thread):
    train.main(args(pack, tmp_path, "source", "--max_steps=1"))
    initial = tmp_path / "initial.pt"
    shutil.copy(tmp_path / "source" / "backbone.pt", initial)
    train.main(args(pack, tmp_path, "tuned", "--max_steps=2", f"--init_backbone={initial}"))
    os.remove(initial)
    with pytest.raises(Exception, match="init_backbone"):  # a fresh start still needs the file, and says so
        train.main(args(pack, tmp_path, "other", "--max_steps=2", f"--init_backbone={initial}"))
    summary = train.main(args(pack, tmp_path, "tuned", "--max_steps=3", f"--init_backbone={initial}"))
    assert summary["steps"] == 3
    assert f"every weight comes from it (the run started from init_backbone {initial}" in log_text(tmp_path / "tuned")


@pytest.mark.slow
def test_an_output_dir_that_cannot_be_written_is_refused_at_start_in_one_line(pack):
    shared = tempfile.mkdtemp(prefix="surfaces_")  # a folder the other user can reach (pytest's is 0700)
    try:
        os.chmod(shared, 0o755)
        shutil.copytree(pack, os.path.join(shared, "pack"))
        for folder, _, names in os.walk(shared):
            os.chmod(folder, 0o755)
            for name in names:
                os.chmod(os.path.join(folder, name), 0o644)
        locked = os.path.join(shared, "locked")
        os.mkdir(locked, 0o555)
        os.chmod(locked, 0o555)
        status, _, stderr = run_script("train.py", args(os.path.join(shared, "pack"), locked, "run")[1:],
                                       other_user=True)
        assert status == 2, stderr[-3000:]
        assert stderr.strip().splitlines()[-1].startswith(f"error: run folder {locked}/run: {locked} cannot be written")
        assert "Traceback" not in stderr
        assert not os.listdir(locked)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("options, wanted", [('{"num_heads": 0}', "num_heads=0; valid: a positive divisor"),
                                             ('{"num_heads": -4}', "num_heads=-4; valid: a positive divisor"),
                                             ('{"num_heads": 5}', "num_heads=5; valid: a positive divisor"),
                                             ('{"mask_ratio": "lots"}', "mask_ratio='lots'; valid: a number in")])
def test_bad_vit_options_are_refused_by_the_config(options, wanted):
    with pytest.raises(ConfigError, match=wanted):
        load_config(["--backbone=vit_t", f"--backbone_options={options}", "--device=cpu"])


@pytest.mark.slow
def test_torchrun_prints_one_summary_rank_0s(pack, tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
               *args(pack, tmp_path, "two", "--max_steps=1", "--save_freq=0")]
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["steps"] == 1


def test_a_frozen_backbone_says_when_it_starts_to_learn(pack, tmp_path, one_thread):
    train.main(args(pack, tmp_path, "frozen", "--max_steps=3", "--freeze_backbone_steps=2"))
    text = log_text(tmp_path / "frozen")
    assert "step 3: the backbone starts to learn (freeze_backbone_steps)" in text
    train.main(args(pack, tmp_path, "head_only", "--max_steps=2", "--freeze_backbone_steps=5"))
    assert "freeze_backbone_steps=5 covers all 2 steps of the run: only the head trains" in log_text(tmp_path / "head_only")
