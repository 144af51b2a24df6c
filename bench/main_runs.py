"""Run ``main.py`` as a user would, for the bench scripts and the tests (tests/conftest.py imports this module):
a child process whose run directory comes from the line that a finished run prints last on stdout,
``run_dir=<absolute path>`` (REC/app/launch.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from REC.utils.run_dir_line import RUN_DIR_PREFIX, run_dir_from

ROOT = Path(__file__).resolve().parents[1]


class MainFailed(RuntimeError):
    """main.py ended with a non-zero status, or finished without naming its run directory."""


class MainRun(NamedTuple):
    """What ``run_main`` returns: the finished process and its run directory (None when it failed)."""
    proc: subprocess.CompletedProcess
    run_dir: Path | None

    @property
    def result(self) -> dict:
        """The run's result.json."""
        return json.loads((self.run_dir / "result.json").read_text())


def run_main(args: list, *, check: bool = True, timeout: float | None = None, cwd: Path = ROOT) -> MainRun:
    """``python main.py <args>`` in ``cwd`` (the repository root by default). ``check``: a non-zero status, or a
    finished run without its ``run_dir=`` line, raises MainFailed with the command and the end of its output."""
    args = [str(a) for a in args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # REC importable from any cwd
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)
    run_dir = run_dir_from(proc.stdout) if proc.returncode == 0 else None
    if check and run_dir is None:
        why = f"status {proc.returncode}" if proc.returncode else f"no '{RUN_DIR_PREFIX}' line at the end of stdout"
        raise MainFailed(f"main.py {' '.join(args)} failed ({why}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return MainRun(proc, run_dir)
