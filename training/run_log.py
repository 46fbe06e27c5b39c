"""Where a run reports: the console (through tqdm, so the bar stays intact), `log.txt`, `metrics.jsonl`
(one JSON object per event, for scripts and plots) and Visdom's live curves. Only rank 0 writes."""

import json
import os
import subprocess
import sys
import time
from urllib.parse import quote

from tqdm import tqdm

from .visdom_logger import VisdomLogger


def git_commit(folder: str) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return result.stdout.strip() + ("-dirty" if dirty else "") if result.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class RunLog:
    """Only rank 0 writes. A failure to write (a full disk, a vanished folder) is reported once on
    stderr and never stops training: the checkpoint, not the log, is what must survive."""

    def __init__(self, run_dir: str, enabled: bool, visdom_env: str, use_visdom: bool, server: str, port: int):
        self.enabled = enabled
        self.run_dir = run_dir
        self.start = time.time()
        self._write_failed = False
        self.visdom_url = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._text = open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8")
        self._metrics = open(os.path.join(run_dir, "metrics.jsonl"), "a", encoding="utf-8")
        self.visdom = VisdomLogger(env=visdom_env, server=server, port=port, enabled=use_visdom)
        if self.visdom.active:
            self.visdom_url = f"{self.visdom.url}/env/{quote(visdom_env)}"

    def _write(self, handle, line: str) -> None:
        try:
            handle.write(line)
            handle.flush()
        except (OSError, ValueError) as error:
            if not self._write_failed:
                self._write_failed = True
                tqdm.write(f"warning: cannot write {handle.name} ({error}); training goes on", file=sys.stderr)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        tqdm.write(message)
        self._write(self._text, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def event(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": kind, "time": round(time.time() - self.start, 3), **fields}
        self._write(self._metrics, json.dumps(record) + "\n")

    def curves(self, step: int, trace: str = "train", **values: float) -> None:
        """One point per named value on its Visdom window (traces let train/val share a window)."""
        if not self.enabled:
            return
        for window, value in values.items():
            self.visdom.log_scalar(window, step, value, trace=trace)

    def close(self) -> None:
        if self.enabled:
            self._text.close()
            self._metrics.close()
            self.visdom.close()
