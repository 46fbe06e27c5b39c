"""The README runs as written: every command of its ```bash blocks, in order, in a scratch copy of the
repository where a small stand-in for `make demo` has written what the real one writes (data/synthetic,
runs/demo). A block that needs outside data says so in a `<!-- readme-test: skip: reason -->` line
above it. Commands that take size options get small ones appended (SMALL below); nothing else about a
command is changed."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"<!-- readme-test: skip: (.+?) -->")

# Small sizes for the commands that take them (the options are appended; a later flag wins).
SMALL_SYNTHETIC = ("--identities 12 --images-per-identity 6 --held-out-identities 12 --lfw-pairs 60 --agedb-pairs 60 "
                   "--cfp-pairs 60 --workers 1")
SMALL = [
    ("tools/make_synthetic.py", SMALL_SYNTHETIC),
    ("train.py", "--max_steps=2 --visdom=false --progress=false --workers=0 --test_freq=0 --save_freq=0"),
    ("tools/feature_space.py", "--classes 3 --images-per-class 4 --plot-images-per-class 2 --epochs 1 "
                               "--wide-epochs 0 --frames 2"),
    ("tools/make_synthetic_ijb.py", "--subjects 6 --probes-per-subject 1 --unenrolled-subjects 2"),
    ("tools/baseline_old_step.py", "--rows mobilefacenet:4 --steps 1 --warmup 0 --num-classes 20"),
    ("tools/benchmark.py", "--steps 1 --warmup 0 --batch-size 4 --num-classes 20 --megaface-distractors 1000"),
    ("tools/benchmark_layers.py", "--repeats 1"),
    ("tools/benchmark_loader.py", "--images 64 --passes 1 --workers 1"),
    ("tools/benchmark_eval.py", "--pairs 600 --distractors 1000 --probes 50"),
    ("tools/benchmark_detect.py", "--runs 1"),
]


def readme_blocks() -> list[tuple[int, str | None, list[str]]]:
    """(line number, skip reason or None, commands) of every ```bash block of the README."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if lines[index].strip() != "```bash":
            index += 1
            continue
        start = index
        previous = next((lines[i] for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        skip = SKIP.search(previous)
        body = []
        index += 1
        while lines[index].strip() != "```":
            body.append(lines[index])
            index += 1
        commands, pending = [], ""
        for line in body:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = (pending + line).strip()
            pending = ""
            if command and not command.startswith("#"):
                commands.append(command)
        blocks.append((start + 1, skip.group(1) if skip else None, commands))
    return blocks


def small(command: str) -> str:
    """The command with small sizes appended to each invocation of a tool that takes them."""
    parts = []
    for piece in re.split(r"(&&|;)", command):
        for script, options in SMALL:
            words = shlex.split(piece.split(" #")[0]) if piece not in ("&&", ";") else []
            if len(words) > 1 and words[0] == "python" and words[1] == script:
                piece = piece.split(" #")[0].rstrip() + " " + options + " "
                break
        parts.append(piece)
    return "".join(parts)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A working copy: the repository's code linked in, and what `make demo` writes, made small."""
    folder = tmp_path_factory.mktemp("readme")
    for name in os.listdir(REPO):
        if name not in ("data", "runs", "result", "exports", ".git", ".cache") and not name.endswith(".npz"):
            os.symlink(os.path.join(REPO, name), folder / name)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "2"}
    for command in (f"python tools/make_synthetic.py data/synthetic {SMALL_SYNTHETIC}",
                    "python train.py configs/demo.py --max_steps=3 --visdom=false --progress=false --workers=0"):
        result = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return folder, env


def test_every_block_runs_or_names_the_outside_data_it_needs():
    blocks = readme_blocks()
    assert len(blocks) >= 10
    for line, skip, commands in blocks:
        assert commands, f"README line {line}: an empty bash block"
        assert skip is None or len(skip) > 10, f"README line {line}: a skip needs its reason"


def repository_outputs() -> dict:
    """Files (and their modification times) where a command could wrongly write into the repository."""
    found = {}
    for top in ("result", "."):
        for folder, subfolders, names in os.walk(os.path.join(REPO, top)):
            subfolders[:] = [] if top == "." else subfolders
            found.update({os.path.join(folder, n): os.path.getmtime(os.path.join(folder, n)) for n in names})
    return found


def test_readme_commands_run_as_printed(scratch):
    folder, env = scratch
    before = repository_outputs()
    ran = 0
    for line, skip, commands in readme_blocks():
        if skip is not None:
            continue
        for command in commands:
            if command.startswith("make "):  # make demo / make test: this test and its fixture stand in for them
                continue
            result = subprocess.run(["bash", "-c", small(command)], cwd=folder, env=env, capture_output=True,
                                    text=True, timeout=900)
            assert result.returncode == 0, (f"README line {line}: {command}\n{result.stdout[-2000:]}\n"
                                            f"{result.stderr[-3000:]}")
            ran += 1
    assert ran >= 20
    assert repository_outputs() == before  # everything went into the scratch copy, nothing into the repository
