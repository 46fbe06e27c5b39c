"""Imports point one way: each layer may import only the layers below it (docs/design.md).

Every import statement of every project file is parsed (function-level imports included), so an
upward arrow fails here the moment it is written. Each sub-package of evaluation/ is a protocol: a
unit of its own above the shared evaluation modules, and no protocol imports another."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module may import its own unit and the layers below its own, nothing else.
LAYERS = (
    ("runtime",),                          # device, precision, CLI helpers; runtime.artifacts: checkpoints, atomic files
    ("dataset", "backbone", "margin"),     # leaves: never import each other
    ("evaluation",),                       # shared: features, feature store, thresholds, plots, model loading, CLI
    ("evaluation.*",),                     # one sub-package per protocol: never import each other
    ("training", "interop"),               # peers: neither imports the other
    ("config",),                           # validates a run against every registry below it
    ("scripts",),                          # train.py, eval_*.py, tools/<group>/*.py: import anything below
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
PACKAGES_WITH_SUB_UNITS = {"evaluation"}
SKIPPED_FOLDERS = {".venv", ".cache", ".git", "data", "runs", "tests", "result", "__pycache__"}  # at the top only


def project_files() -> list[str]:
    files = []
    for folder, subfolders, names in os.walk(REPO):
        top = folder == REPO  # tools/data/ is code, /data/ is not
        subfolders[:] = [s for s in subfolders if not (top and s in SKIPPED_FOLDERS) and not s.startswith(".")
                         and s != "__pycache__"]
        files += [os.path.relpath(os.path.join(folder, n), REPO) for n in names if n.endswith(".py")]
    return sorted(files)


def layer_of(unit: str) -> int | None:
    if unit in LAYER_OF:
        return LAYER_OF[unit]
    package = unit.split(".")[0]
    return LAYER_OF.get(f"{package}.*") if "." in unit else None


def unit_of_module(module: str) -> str | None:
    """The unit an absolute module name belongs to (None for standard and third-party modules)."""
    parts = module.split(".")
    if parts[0] in PACKAGES_WITH_SUB_UNITS and len(parts) > 1 and \
            os.path.isdir(os.path.join(REPO, parts[0], parts[1])):
        return f"{parts[0]}.{parts[1]}"
    if parts[0] in LAYER_OF:
        return parts[0]
    scripts = {os.path.splitext(n)[0] for n in os.listdir(REPO) if n.endswith(".py")} - {"config"}
    if parts[0] in scripts or parts[0] == "tools":
        return "scripts"
    return None


def module_of(relative_path: str) -> str:
    parts = os.path.splitext(relative_path)[0].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(relative_path: str) -> str:
    """The layer unit a file belongs to: its package (or protocol sub-package), `config`, or `scripts`."""
    parts = relative_path.split(os.sep)
    if parts[0] == "configs":  # override files: read by config.py, part of the config layer
        return "config"
    if parts[0] == "tools" or len(parts) == 1:
        return "config" if parts == ["config.py"] else "scripts"
    return unit_of_module(module_of(relative_path)) or parts[0]


def imported_units(source: str, relative_path: str) -> list[tuple[int, str]]:
    """(line, imported project unit) of every import in `source`; standard and third-party modules
    are ignored, relative imports resolve against the file's own package."""
    found = []
    package = module_of(relative_path) if relative_path.endswith("__init__.py") else \
        module_of(relative_path).rpartition(".")[0]
    for node in ast.walk(ast.parse(source, relative_path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
            absolute = ".".join(base + ([node.module] if node.module else []))
            targets = [absolute] if node.module else [f"{absolute}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names
                                       if node.module in PACKAGES_WITH_SUB_UNITS]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            unit = unit_of_module(target)
            if unit is not None:
                found.append((node.lineno, unit))
    return found


def violations(source: str, relative_path: str) -> list[str]:
    unit = unit_of(relative_path)
    if layer_of(unit) is None:
        return [f"{relative_path}: package {unit!r} has no layer; add it to LAYERS here and to docs/design.md"]
    problems = []
    for line, target in imported_units(source, relative_path):
        allowed = target == unit != "scripts" or layer_of(target) < layer_of(unit)
        if not allowed:
            problems.append(f"{relative_path}:{line}: {unit} (layer {layer_of(unit)}) imports {target} "
                            f"(layer {layer_of(target)})")
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
    assert violations("import train\n", "tools/bench/benchmark.py")  # no script imports a script
    assert violations("from tools.data import make_synthetic\n", "tools/bench/benchmark.py")
    assert violations("from tools import benchmark\n", "evaluation/cli.py")
    assert violations("import runtime\n", "newpackage/module.py")  # an unplaced package
    assert violations("from ..megaface.protocol import x\n", "evaluation/ijb/cli.py")  # protocols are peers
    assert violations("from evaluation.ijb import Mode\n", "evaluation/megaface/cli.py")
    assert violations("from evaluation import ijb\n", "evaluation/blufr/cli.py")
    assert violations("from .verification import RocCurve\n", "evaluation/plot.py")  # shared never imports one
    assert violations("from evaluation.verification import PROTOCOLS\n", "evaluation/features.py")
    assert not violations("from runtime import resolve_device\nfrom .base import x\n", "margin/angular.py")
    assert not violations("from training.step import TrainStep\nimport numpy\n", "tools/bench/benchmark.py")
    assert not violations("from ..cli import load_model\nfrom .protocol import Mode\n", "evaluation/ijb/cli.py")
    assert not violations("from evaluation.ijb.cli import main\n", "eval_ijb.py")


def test_training_and_interop_read_checkpoints_without_evaluation():
    """The checkpoint format lives in runtime.artifacts, so the loop and the converters need no evaluation code."""
    found = []
    for path in project_files():
        if path.split(os.sep)[0] in ("training", "interop"):
            with open(os.path.join(REPO, path), encoding="utf-8") as handle:
                found += [f"{path}:{line}" for line, unit in imported_units(handle.read(), path)
                          if unit.split(".")[0] == "evaluation"]
    assert not found, found


# What only runtime/artifacts.py may call: the renames and fsyncs of files that must never be half
# written, and the loading of checkpoints, which must never run code.
ARTIFACT_CALLS = {("os", "replace"), ("os", "rename"), ("os", "fsync"), ("torch", "load")}


def test_only_the_artifact_module_renames_fsyncs_or_loads_checkpoints():
    found = []
    for path in project_files():
        if path == os.path.join("runtime", "artifacts.py"):
            continue
        with open(os.path.join(REPO, path), encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        found += [f"{path}:{node.lineno}: {node.func.value.id}.{node.func.attr}" for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and (node.func.value.id, node.func.attr) in ARTIFACT_CALLS]
    assert not found, "\n".join(found)


def test_every_tool_sits_in_a_group_listed_in_the_tools_index():
    tools = os.path.join(REPO, "tools")
    with open(os.path.join(tools, "README.md"), encoding="utf-8") as handle:
        index = handle.read()
    loose = [name for name in os.listdir(tools) if os.path.isfile(os.path.join(tools, name)) and name != "README.md"]
    assert not loose, f"tools/ holds files outside a group: {loose}"
    unlisted = [f"{group}/{name}" for group in sorted(os.listdir(tools)) if os.path.isdir(os.path.join(tools, group))
                for name in sorted(os.listdir(os.path.join(tools, group)))
                if name.endswith((".py", ".sh")) and f"{group}/{name}" not in index]
    assert not unlisted, f"tools missing from tools/README.md: {unlisted}"
