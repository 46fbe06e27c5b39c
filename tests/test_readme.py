"""The documentation runs as written: every command of the ```bash blocks of README.md and of every
docs/*.md page, in order (README first, then the pages in DOCS_ORDER, then any other page), in a
scratch copy of the repository where a small stand-in for `make demo` has written what the real one
writes (data/synthetic, runs/demo). A block that needs outside data says so in a
`<!-- readme-test: skip: reason -->` line above it. Commands that take size options get small ones
appended (SMALL below); nothing else about a command is changed. Afterwards the repository is as it
was (`git status` unchanged) and the scratch copy's root holds nothing new that git would not ignore:
the commands write under runs/, data/ or an output folder they name."""

import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = re.compile(r"<!-- readme-test: skip: (.+?) -->")
# Pages whose commands use what an earlier page's commands wrote (data.md unpacks data/lfw_images and
# data/synthetic_images, which evaluation.md reads) run in this order; other pages follow, sorted.
DOCS_ORDER = ("data.md", "photos.md", "models.md", "training.md", "evaluation.md", "deployment.md",
              "benchmarks.md", "tests.md", "design.md")
README_LIMIT_BYTES = 15 * 1024

# Small sizes for the commands that take them (the options are appended; a later flag wins).
SMALL_SYNTHETIC = ("--identities 12 --images-per-identity 6 --held-out-identities 12 --lfw-pairs 60 --agedb-pairs 60 "
                   "--cfp-pairs 60 --workers 1")
SMALL = [
    ("tools/data/make_synthetic.py", SMALL_SYNTHETIC),
    ("train.py", "--max_steps=2 --visdom=false --progress=false --workers=0 --test_freq=0 --save_freq=0"),
    ("tools/model/feature_space.py", "--classes 3 --images-per-class 4 --plot-images-per-class 2 --epochs 1 "
                               "--wide-epochs 0 --frames 2"),
    ("tools/data/make_synthetic_ijb.py", "--subjects 6 --probes-per-subject 1 --unenrolled-subjects 2"),
    ("tools/bench/baseline_old_step.py", "--rows mobilefacenet:4 --steps 1 --warmup 0 --num-classes 20"),
    ("tools/bench/benchmark.py", "--steps 1 --warmup 0 --batch-size 4 --num-classes 20 --megaface-distractors 1000"),
    ("tools/bench/benchmark_layers.py", "--repeats 1"),
    ("tools/bench/benchmark_loader.py", "--images 64 --passes 1 --workers 1"),
    ("tools/bench/benchmark_eval.py", "--pairs 600 --distractors 1000 --probes 50"),
    ("tools/bench/benchmark_detect.py", "--runs 1"),
]


def documents() -> list[str]:
    """README.md, then every docs/*.md page (relative paths), in the order their commands run."""
    pages = sorted(name for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md"))
    ordered = [name for name in DOCS_ORDER if name in pages] + [name for name in pages if name not in DOCS_ORDER]
    return ["README.md"] + [f"docs/{name}" for name in ordered]


def readme_blocks(document: str = "README.md") -> list[tuple[int, str | None, list[str]]]:
    """(line number, skip reason or None, commands) of every ```bash block of `document`."""
    with open(os.path.join(REPO, document), encoding="utf-8") as handle:
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


def every_block() -> list[tuple[str, int, str | None, list[str]]]:
    return [(document, *block) for document in documents() for block in readme_blocks(document)]


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
    for command in (f"python tools/data/make_synthetic.py data/synthetic {SMALL_SYNTHETIC}",
                    "python train.py configs/demo.py --max_steps=3 --visdom=false --progress=false --workers=0"):
        result = subprocess.run(command, shell=True, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return folder, env


def test_every_block_runs_or_names_the_outside_data_it_needs():
    blocks = every_block()
    assert len(blocks) >= 15
    for document, line, skip, commands in blocks:
        assert commands, f"{document} line {line}: an empty bash block"
        assert skip is None or len(skip) > 10, f"{document} line {line}: a skip needs its reason"


def test_the_readme_is_a_front_door_that_maps_every_page():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert len(readme.encode("utf-8")) <= README_LIMIT_BYTES
    unlinked = [page for page in documents()[1:] if f"]({page})" not in readme]
    assert not unlinked, f"pages the README's map does not link: {unlinked}"


def ignored_by_git(name: str) -> bool:
    """Whether .gitignore covers a top-level entry `name` (runs/, data/, caches): where commands may write."""
    import fnmatch
    with open(os.path.join(REPO, ".gitignore"), encoding="utf-8") as handle:
        patterns = [line.strip().strip("/") for line in handle if line.strip() and not line.startswith("#")]
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def git_status() -> str | None:
    """`git status --porcelain` of the repository (tracked files changed, files added), or None
    outside a git checkout."""
    try:
        result = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
    except OSError:
        return None
    return result.stdout if result.returncode == 0 else None


def repository_outputs() -> dict:
    """Files (and their modification times) where a command could wrongly write into the repository."""
    found = {}
    for top in ("result", "docs", "."):
        for folder, subfolders, names in os.walk(os.path.join(REPO, top)):
            subfolders[:] = [] if top == "." else subfolders
            found.update({os.path.join(folder, n): os.path.getmtime(os.path.join(folder, n)) for n in names})
    return found


@pytest.mark.slow
def test_readme_commands_run_as_printed(scratch):
    folder, env = scratch
    before, status_before, entries_before = repository_outputs(), git_status(), set(os.listdir(folder))
    ran = 0
    for document, line, skip, commands in every_block():
        if skip is not None:
            continue
        for command in commands:
            if command.startswith("make "):  # make demo / make test: this test and its fixture stand in for them
                continue
            result = subprocess.run(["bash", "-c", small(command)], cwd=folder, env=env, capture_output=True,
                                    text=True, timeout=900)
            assert result.returncode == 0, (f"{document} line {line}: {command}\n{result.stdout[-2000:]}\n"
                                            f"{result.stderr[-3000:]}")
            ran += 1
    assert ran >= 20
    assert repository_outputs() == before  # everything went into the scratch copy, nothing into the repository
    assert git_status() == status_before  # no tracked file changed, no file added (through the linked folders)
    # the scratch copy's root is the repository's root as a user sees it: commands write under runs/,
    # data/ or an output folder they name that git ignores, never beside the code
    stray = sorted(name for name in set(os.listdir(folder)) - entries_before if not ignored_by_git(name))
    assert not stray, f"the documented commands left these in the repository root: {stray}"
