"""What the bench scripts share: run ``main.py`` as a user would and read back its ``result.json``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_main(args_list: list[str]) -> tuple[dict, Path]:
    """``python main.py <args>`` from the repository root; (result.json as a dict, the run directory).
    A failed run stops the bench with the command and the end of its output."""
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args_list], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"main.py {' '.join(args_list)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    line = next(line for line in proc.stdout.splitlines() if "results in" in line)
    path = Path(line.rsplit(" ", 1)[-1])
    return json.loads(path.read_text()), path.parent
