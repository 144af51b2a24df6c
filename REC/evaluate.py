"""Re-evaluate a finished (or running) run's checkpoint on its valid and test splits, on any device layout.

    python -m REC.evaluate runs/SASRec-Beauty-... --device cpu:2 [--checkpoint last.pth]
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError
from .launch import add_launch_args, check_launch_args, launch
from .run import eval_worker, load_run_config


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m REC.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory made by main.py")
    p.add_argument("--checkpoint", default="best.pth", help="checkpoint file in the run directory")
    add_launch_args(p)
    args = p.parse_args(argv)
    check_launch_args(p, args)
    try:
        load_run_config(args.run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = launch(eval_worker, (args.run_dir, args.device, args.checkpoint), args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
