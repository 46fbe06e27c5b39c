"""Running an entry point as a user does: in a subprocess from the repository root, in a forked child
as __main__ (as user `nobody` where permissions matter), or its `main` in this process with run_cli's
exit status and one-line errors (helpers of the script tests)."""

import os
import runpy
import subprocess
import sys
import tempfile
import traceback

import torch

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


NOBODY = 65534


def run_script(script: str, argv, other_user: bool = False, before=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python SCRIPT ARGV` from the repository root: a forked child
    that runs the script as __main__, as user `nobody` with `other_user` (when the tests run as
    root), after `before()` when given (set-up that needs the child's process id)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = os.fork()
        if child == 0:  # the child: never returns into pytest
            # One thread: a forked child that enters an OpenMP parallel region after its parent has used
            # OpenMP's threads waits forever for threads it does not have (libgomp is not fork-safe).
            torch.set_num_threads(1)
            status = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = os.fdopen(1, "w", encoding="utf-8")  # pytest's capture objects are not fds 1, 2
                sys.stderr = os.fdopen(2, "w", encoding="utf-8")
                if other_user and os.geteuid() == 0:
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                if before is not None:
                    before()
                sys.argv = [script, *map(str, argv)]
                runpy.run_path(os.path.join(REPO, script), run_name="__main__")
                status = 0
            except SystemExit as stop:
                if isinstance(stop.code, str):  # what the interpreter does with sys.exit("message")
                    print(stop.code, file=sys.stderr)
                status = 1 if isinstance(stop.code, str) else stop.code or 0
            except BaseException:  # noqa: BLE001 -- printed as the interpreter would, for the assertion
                traceback.print_exc()
                status = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        _, wait = os.waitpid(child, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(wait), out.read().decode(), err.read().decode()
