"""Logging: rank 0 writes INFO (or the configured level) to the console and to <run dir>/log.txt; other ranks
only warnings and errors to the console, so a multi-process run prints one story."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(run_dir: Path | None, rank: int, level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter(FORMAT if rank == 0 else f"[rank {rank}] {FORMAT}"))
    root.addHandler(console)
    if rank == 0 and run_dir is not None:
        file = logging.FileHandler(Path(run_dir) / "log.txt")
        file.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(file)
    root.setLevel(getattr(logging, level.upper(), logging.INFO) if rank == 0 else logging.WARNING)
