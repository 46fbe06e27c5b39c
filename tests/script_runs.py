"""Running an entry point as a user does: in a subprocess from the repository root, or its `main` in
this process with run_cli's exit status and one-line errors (helpers of the script tests)."""

import os
import subprocess
import sys

from runtime import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    """`python ARGS` from the repository root, on one thread (the test machines' two cores are shared)."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def run_here(capsys, main, *args):
    """(exit status, stdout, stderr) of an entry point's `main(argv)` in this process, as run_cli ends it."""
    capsys.readouterr()
    status, message = 0, ""
    try:
        run_cli(lambda: main([str(arg) for arg in args]))
    except SystemExit as stopped:
        status, message = (1, stopped.code + "\n") if isinstance(stopped.code, str) else (stopped.code or 0, "")
    captured = capsys.readouterr()
    return status, captured.out, captured.err + message
