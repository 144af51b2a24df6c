"""Command line: parse, check the config and data once, then run one process or launch several.

Several processes go through torch.distributed's own launcher API (``elastic_launch``, what ``torchrun``
uses): on one machine the rendezvous binds port 0, so the operating system picks a free port and no two
runs collide; across machines ``--nnodes/--node_rank/--master_addr/--master_port`` are passed through.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid

from .config import ConfigError
from .data import DataError
from .distributed import DeviceSpec
from .run import create_run, load_run_config, preflight, worker
from .utils.logging import setup_logging

log = logging.getLogger(__name__)


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs on one or more processes."""
    p.add_argument("--device", default="cpu",
                   help="cpu (one process), cpu:N (N processes, gloo) or GPU ids such as 0,1,2,3 (NCCL)")
    p.add_argument("--nnodes", type=int, default=1, help="number of machines (multi-node runs)")
    p.add_argument("--node_rank", type=int, default=0, help="rank of this machine among --nnodes")
    p.add_argument("--master_addr", default="127.0.0.1", help="address of the node_rank 0 machine")
    p.add_argument("--master_port", type=int, default=None,
                   help="port on the master machine; required with --nnodes > 1, chosen free otherwise")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="main.py", description="Train and evaluate a PixelRec model.",
        epilog="Any --key=value after the options overrides a config key (YAML-typed; dotted keys for nested "
               "values, e.g. --optim_args.learning_rate=1e-3 --epochs=5).")
    p.add_argument("--config_file", nargs="+", default=[], metavar="YAML",
                   help="config files, merged left to right over the package defaults")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    add_launch_args(p)
    args, overrides = p.parse_known_args(argv)
    if args.resume and (args.config_file or overrides):
        p.error("--resume takes the config saved in the run directory; drop --config_file and overrides")
    if not args.resume and not args.config_file:
        p.error("give --config_file (e.g. IDNet/sasrec.yaml overall/ID.yaml) or --resume RUN_DIR")
    check_launch_args(p, args)
    return args, overrides


def check_launch_args(p: argparse.ArgumentParser, args) -> None:
    if args.nnodes > 1 and args.master_port is None:
        p.error("--nnodes > 1 needs --master_port (and --master_addr) so that all machines meet")
    try:
        args.spec = DeviceSpec.parse(args.device)
    except ValueError as exc:
        p.error(str(exc))


def launch_config(args, nproc: int):
    from torch.distributed.launcher.api import LaunchConfig
    if args.nnodes == 1 and args.master_port is None:
        # what torchrun --standalone does: a c10d store on port 0, so the OS assigns a free port
        backend, endpoint, rdzv_configs = "c10d", "localhost:0", {}
    else:
        backend, endpoint = "static", f"{args.master_addr}:{args.master_port}"
        rdzv_configs = {"rank": args.node_rank}
    return LaunchConfig(min_nodes=args.nnodes, max_nodes=args.nnodes, nproc_per_node=nproc,
                        run_id=str(uuid.uuid4()), rdzv_backend=backend, rdzv_endpoint=endpoint,
                        rdzv_configs=rdzv_configs, max_restarts=0, start_method="spawn")


def launch(entry, entry_args: tuple, args):
    """Run ``entry(*entry_args)`` here (one process) or on every process of the job; rank 0's return value."""
    spec = args.spec
    if spec.kind == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpu_ids)
    if spec.nproc * args.nnodes == 1:
        return entry(*entry_args)
    from torch.distributed.launcher.api import elastic_launch
    results = elastic_launch(launch_config(args, spec.nproc), entry)(*entry_args)
    return results.get(0) if results else None


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    setup_logging(None, 0)
    try:
        if args.resume:
            run_dir = args.resume
            preflight(load_run_config(run_dir), resume=True)
        else:
            _, run_dir = create_run(args.config_file, overrides)
    except (ConfigError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    launch(worker, (str(run_dir), args.device, bool(args.resume)), args)
    return 0
