"""Imports point one way: each layer may import only the layers below it (README, Design).

Every import statement of every project file is parsed (function-level imports included), so an
upward arrow fails here the moment it is written."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import its own package and the layers below its own, nothing else.
LAYERS = (
    ("runtime",),                          # device, precision, allocator, checkpoint files, CLI helpers
    ("dataset", "backbone", "margin"),     # leaves: never import each other
    ("evaluation",),
    ("training", "interop"),               # peers: neither imports the other
    ("config",),                           # validates a run against every registry below it
    ("scripts",),                          # train.py, eval_*.py, tools/*.py: import anything below
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
SKIPPED_FOLDERS = {".venv", ".cache", ".git", "data", "runs", "tests", "result", "__pycache__"}


def project_files() -> list[str]:
    files = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [s for s in subfolders if s not in SKIPPED_FOLDERS and not s.startswith(".")]
        files += [os.path.relpath(os.path.join(folder, n), REPO) for n in names if n.endswith(".py")]
    return sorted(files)


def unit_of(relative_path: str) -> str:
    """The layer unit a file belongs to: its top-level package, `config`, or `scripts`."""
    parts = relative_path.split(os.sep)
    if parts[0] == "configs":  # override files: read by config.py, part of the config layer
        return "config"
    if len(parts) > 1 and parts[0] != "tools":
        return parts[0]
    stem = os.path.splitext(parts[-1])[0]
    return "config" if stem == "config" else "scripts"


def imported_units(source: str, relative_path: str) -> list[tuple[int, str]]:
    """(line, imported project unit) of every import in `source`; standard and third-party modules
    are ignored, relative imports resolve to the file's own package."""
    found = []
    scripts = {os.path.splitext(n)[0] for n in os.listdir(REPO) if n.endswith(".py")} - {"config"}
    for node in ast.walk(ast.parse(source, relative_path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, unit_of(relative_path)))
            continue
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            top = name.split(".")[0]
            if top in LAYER_OF:
                found.append((node.lineno, top))
            elif top in scripts or top == "tools":
                found.append((node.lineno, "scripts"))
    return found


def violations(source: str, relative_path: str) -> list[str]:
    unit = unit_of(relative_path)
    if unit not in LAYER_OF:
        return [f"{relative_path}: package {unit!r} has no layer; add it to LAYERS here and to the README"]
    problems = []
    for line, target in imported_units(source, relative_path):
        allowed = target == unit != "scripts" or LAYER_OF[target] < LAYER_OF[unit]
        if not allowed:
            problems.append(f"{relative_path}:{line}: {unit} (layer {LAYER_OF[unit]}) imports {target} "
                            f"(layer {LAYER_OF[target]})")
    return problems


def test_every_import_points_down():
    problems = []
    for path in project_files():
        with open(os.path.join(REPO, path), encoding="utf-8") as handle:
            problems += violations(handle.read(), path)
    assert not problems, "\n".join(problems)


def test_the_check_catches_upward_sideways_and_script_imports():
    assert violations("from evaluation.verification import evaluate_verification\n", "dataset/synthetic.py")
    assert violations("import margin\n", "backbone/iresnet.py")  # leaves are peers
    assert violations("from training.checkpoint import save_run\n", "interop/convert.py")
    assert violations("def f():\n    from config import Config\n", "training/step.py")  # lazy imports too
    assert violations("import train\n", "tools/benchmark.py")  # no script imports a script
    assert violations("from tools import benchmark\n", "evaluation/cli.py")
    assert violations("import runtime\n", "newpackage/module.py")  # an unplaced package
    assert not violations("from runtime import resolve_device\nfrom .base import x\n", "margin/angular.py")
    assert not violations("from training.step import TrainStep\nimport numpy\n", "tools/benchmark.py")
