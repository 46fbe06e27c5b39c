"""The run folder's guards: one train.py per folder, and a resume that knows what changed.

The lock is an flock on `train.lock`, which the OS releases when its holder dies (a killed run
never blocks its own resume). `config.json` holds the current config and, under "history", every
start and resume with the keys that changed.
"""

import fcntl
import json
import os
import socket
import time

from runtime import UsageError, atomic_file

LOCK = "train.lock"

# Keys whose change would make the checkpoint describe another model, head, data or data order:
# a resume with a new value is refused. Every other key (lr, epochs, frequencies, the loss's s and m,
# ...) may change, and the change is logged.
DEFINES_THE_RUN = ("backbone", "embedding_size", "head", "num_classes", "train_data", "train_root", "aux_loss",
                   "optimizer", "batch_size", "seed", "init_backbone")
PATH_KEYS = ("train_data", "train_root", "init_backbone")


class RunFolderBusy(UsageError):
    pass


class RunFolderLock:
    """`with RunFolderLock(run_dir):` creates the folder and holds its lock (when `enabled`: the main
    process), or raises RunFolderBusy naming the holder."""

    def __init__(self, run_dir: str, enabled: bool = True):
        self.run_dir, self.enabled, self.handle = run_dir, enabled, None

    def __enter__(self):
        if self.enabled:
            try:
                os.makedirs(self.run_dir, exist_ok=True)
                self.handle = lock_run_folder(self.run_dir)
            except OSError as error:  # a read-only file system, a folder gone or changed since the check
                raise UsageError(f"run folder {self.run_dir}: {error.strerror or error}; choose another "
                                 "--output_dir or --name") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock


def lock_run_folder(run_dir: str):
    """Hold the run folder's lock (the returned file object) or raise RunFolderBusy naming the holder."""
    handle = open(os.path.join(run_dir, LOCK), "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderBusy(f"run folder {run_dir} is in use by {holder}; wait for it to end, or choose another "
                            "--name/--output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"train.py PID {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    return handle


def _comparable(key: str, value):
    return os.path.realpath(value) if key in PATH_KEYS and value else value


def config_changes(old: dict, new: dict) -> tuple[dict, dict]:
    """({key: (old, new)} refused, {key: (old, new)} allowed) between a checkpoint's config and this run's."""
    refused, allowed = {}, {}
    for key, value in new.items():
        if key not in old or _comparable(key, old[key]) == _comparable(key, value):
            continue
        (refused if key in DEFINES_THE_RUN else allowed)[key] = (old[key], value)
    return refused, allowed


def refuse_changes(refused: dict, checkpoint_path: str, run_dir: str) -> None:
    if refused:
        listed = "; ".join(f"{key} was {old!r}, now {new!r}" for key, (old, new) in refused.items())
        raise UsageError(f"{checkpoint_path}: cannot resume with a different model or data ({listed}); keep the "
                         f"old values to resume, or start afresh under another --name (or delete {run_dir}), or "
                         f"start a new run from these weights with --init_backbone={os.path.join(run_dir, 'backbone.pt')}")


def record_config(run_dir: str, config: dict, event: str, step: int, changes: dict | None = None) -> None:
    """Write config.json: the current config, plus the history of starts and resumes."""
    path = os.path.join(run_dir, "config.json")
    history = []
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                history = json.load(handle).get("history", [])
        except (ValueError, AttributeError):
            history = []
    entry = {"event": event, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step}
    if changes:
        entry["changes"] = {key: list(pair) for key, pair in changes.items()}
    with atomic_file(path, "w") as handle:
        json.dump({**config, "history": history + [entry]}, handle, indent=2, sort_keys=True)
