"""Re-evaluate a finished (or running) run's checkpoint on its valid and test splits, on any device layout.

    python -m REC evaluate runs/SASRec-Beauty-... --device cpu:2 [--checkpoint last.pth] [--allow_changed_data]

The CSV is read through the run's own vocabulary (its internal ids), and it must be the file the run was trained
on: figures from another file are not the run's figures, so a changed CSV (even one whose rows were merely
reordered) is refused unless ``--allow_changed_data`` says that is what you want.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..config import ConfigError
from ..data import DataError
from ..data.vocabulary import load_run_interactions
from .launch import add_launch_args, check_launch_args, launch
from .loaded_run import load_run_config
from .train import eval_worker
from ..trainer.checkpoint import check_belongs, load as load_checkpoint
from ..utils.errors import UserError
from ..utils.run_layout import BEST_CHECKPOINT, RunDir


def check_run(run_dir: str, checkpoint: str, allow_changed_data: bool):
    """Everything that can fail before processes start; returns how the CSV compares with the run's."""
    config = load_run_config(run_dir)
    path = RunDir(run_dir).checkpoint(checkpoint)
    ckpt = load_checkpoint(path, mmap=True)  # mapped, not read: the workers load the weights
    if "model" not in ckpt:
        raise ConfigError(f"{path}: a checkpoint without model weights; expected best.pth or last.pth of a run")
    check_belongs(ckpt, path, Path(run_dir))
    _, check = load_run_interactions(config, run_dir)  # the split is the workers' to build
    if check.changed and not allow_changed_data:
        raise DataError(f"{check.describe(run_dir)}; its figures would not be the run's. Restore that file, or "
                        f"pass --allow_changed_data to evaluate on the CSV as it is now")
    return check


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m REC evaluate", description=__doc__.splitlines()[0],
                                epilog="Exit status 2: a bad argument, run directory, checkpoint or data file.")
    p.add_argument("run_dir", help="a run directory made by main.py")
    p.add_argument("--checkpoint", default=BEST_CHECKPOINT, help="checkpoint file in the run directory")
    p.add_argument("--allow_changed_data", action="store_true",
                   help="evaluate even when the CSV differs from the one the run was trained on (ids are still "
                        "mapped through the run's vocabulary; interactions of unknown items or users are skipped)")
    add_launch_args(p)
    args = p.parse_args(argv)
    check_launch_args(p, args)
    try:
        check = check_run(args.run_dir, args.checkpoint, args.allow_changed_data)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if check.worth_a_warning:
        print(f"warning: {check.describe(args.run_dir)}", file=sys.stderr)
    result = launch(eval_worker, (args.run_dir, args.device, args.checkpoint), args)
    if result is not None:
        result["data"] = dataclasses.asdict(check)
    print(json.dumps(result, indent=2))
    return 0
