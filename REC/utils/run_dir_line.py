"""The line by which a finished ``main.py`` names its run directory to scripts: ``run_dir=<absolute path>``, the
last line of its stdout. The launcher writes it and the sweep, the benchmarks and the tests read it, so both sides
live here. Nothing but the standard library is imported, so readers do not pay torch's start-up."""
from __future__ import annotations

import os
from pathlib import Path

RUN_DIR_PREFIX = "run_dir="


def run_dir_line(run_dir: str | Path) -> str:
    """The line itself; ``abspath`` (no symlink resolution), the path the run's own processes use."""
    return f"{RUN_DIR_PREFIX}{os.path.abspath(run_dir)}"


def run_dir_from(stdout: str) -> Path | None:
    """The run directory named by the last line of ``stdout``; None when the last line is not that (a run that
    failed, or a node other than node 0 of a multi-node run, which prints none)."""
    lines = stdout.rstrip("\n").splitlines()
    if lines and lines[-1].startswith(RUN_DIR_PREFIX):
        return Path(lines[-1][len(RUN_DIR_PREFIX):])
    return None
