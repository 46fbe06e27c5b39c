"""Choices made by measuring on the machine at hand, the way cuDNN's benchmark mode picks kernels.

A *family* (one layer kind at its shapes, one network's step at its batch) has candidates, one of them
the stock one. At first use each candidate is timed; the fastest is chosen only where it beats the
stock candidate by more than MARGIN (the timing noise of a short measurement), so a choice is never
slower than stock. Results are cached per CPU (runtime.cpu.cpu_identity), thread count, torch version
and oneDNN ISA cap in ``$XDG_CACHE_HOME/face_pytorch/cpu_choices.json`` (default ``~/.cache``), with
the times that chose.

``FACE_CPU_CHOICES`` in the environment says how:

- ``measure`` (the default): use the cache, measure what it lacks;
- ``remeasure``: measure again, replacing what the cache holds for this machine;
- ``rule``: measure nothing and take each family's fixed rule (the tests run so: a choice must
  not depend on how busy the machine was).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import date

import torch

from .artifacts import atomic_file, user_cache_folder
from .cpu import cpu_identity, onednn_isa_cap
from .errors import UnknownName

MODE_VARIABLE = "FACE_CPU_CHOICES"
MODES = ("measure", "remeasure", "rule")
MARGIN = 0.05  # a candidate must be this much faster than stock to be chosen

_decided: dict[str, dict] = {}  # family -> its record, decided in this process


def mode() -> str:
    value = os.environ.get(MODE_VARIABLE, "measure")
    if value not in MODES:
        raise UnknownName(MODE_VARIABLE, value, MODES)
    return value


def cache_file() -> str:
    return os.path.join(user_cache_folder(), "cpu_choices.json")


def machine_key() -> str:
    """What a measurement holds for: the CPU (model, family and model numbers, flags), the thread count,
    the torch version and any ISA cap set for oneDNN (a capped oneDNN runs other kernels)."""
    cap = onednn_isa_cap()
    return (f"{cpu_identity()} | {torch.get_num_threads()} threads | torch {torch.__version__}"
            + (f" | oneDNN capped at {cap}" if cap else ""))


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
        return content if isinstance(content, dict) else {}
    except (OSError, ValueError):  # none yet, or unreadable: measured again and rewritten
        return {}


def _write_cache(path: str, family: str, record: dict) -> None:
    content = _read_cache(path)
    content.setdefault(machine_key(), {})[family] = record
    try:
        with atomic_file(path, "w") as handle:
            json.dump(content, handle, indent=1, sort_keys=True)
    except OSError:  # a read-only home: the choice holds for this process only
        pass


def median_ms(run, repeats: int = 3, warmup: int = 1) -> float:
    """Median milliseconds of `run()` over `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def pick(times_ms: dict[str, float], stock: str) -> str:
    """The fastest candidate if it beats `stock` by more than MARGIN, else `stock`."""
    fastest = min(times_ms, key=times_ms.get)
    return fastest if times_ms[fastest] < (1.0 - MARGIN) * times_ms[stock] else stock


def choose(family: str, candidates: dict, stock: str, rule: str) -> dict:
    """The record {"choice", "ms", "how", "date"} of `family`: by `rule` in mode rule (ms empty), else
    from the cache or measured now; `candidates` maps each name to a `run()` timed by median_ms."""
    if stock not in candidates or rule not in candidates:
        raise ValueError(f"{family}: stock {stock!r} and rule {rule!r} must be among the candidates {sorted(candidates)}")
    current = mode()
    if current == "rule":
        return {"choice": rule, "ms": {}, "how": f"rule, {MODE_VARIABLE}=rule", "date": ""}
    if family in _decided:
        return _decided[family]
    path = cache_file()
    if current == "measure":
        cached = _read_cache(path).get(machine_key(), {}).get(family)
        if isinstance(cached, dict) and cached.get("choice") in candidates:
            _decided[family] = {**cached, "how": "cached"}
            return _decided[family]
    times = {name: round(median_ms(run), 3) for name, run in candidates.items()}
    record = {"choice": pick(times, stock), "ms": times, "how": "measured", "date": date.today().isoformat()}
    _write_cache(path, family, record)
    _decided[family] = record
    return record


def forget() -> None:
    """Drop this process's decisions (the cache file stays): the next choose() reads or measures again."""
    _decided.clear()


def decided(prefix: str = "") -> dict[str, dict]:
    """The records measured or read from the cache in this process, of the families starting with `prefix`."""
    return {family: record for family, record in _decided.items() if family.startswith(prefix)}


def describe(family: str, record: dict) -> str:
    """One line: the family, its choice, how it was made, and the times that made it."""
    if not record["ms"]:
        return f"{family}: {record['choice']} ({record['how']})"
    times = ", ".join(f"{name} {ms:.1f} ms" for name, ms in record["ms"].items())
    return f"{family}: {record['choice']} ({record['how']} {record['date']}: {times})"

