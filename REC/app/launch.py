"""Command line: parse, check the config and data once, then run one process or launch several.

Several processes go through torch.distributed's own launcher API (``elastic_launch``, what ``torchrun``
uses): on one machine the rendezvous binds port 0, so the operating system picks a free port and no two
runs collide; across machines ``--nnodes/--node_rank/--master_addr/--master_port`` are passed through.

A run on several machines has one run directory, made by node 0's launcher under ``output_dir``, which must be on
a filesystem that every node mounts at the same path: rank 0 writes the checkpoints and every rank reads them.
The other nodes' launchers check their config and data but make no directory; their processes take rank 0's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import uuid

from ..config import split_config_files
from .configure import build_config
from ..distributed import DeviceError, DeviceSpec, select_gpus
from .loaded_run import load_run_config
from .train import create_run, preflight, worker
from ..trainer.checkpoint import CheckpointError, saved_world_size
from ..utils.errors import UserError
from ..utils.run_layout import RunDir
from ..utils.logging import setup_logging
from ..utils.run_dir_line import run_dir_line

log = logging.getLogger(__name__)


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs on one or more processes."""
    p.add_argument("--device", default="cpu",
                   help="cpu (one process), cpu:N (N processes, gloo) or GPU ids such as 0,1,2,3 (NCCL)")
    p.add_argument("--nnodes", type=int, default=1, help="number of machines (multi-node runs)")
    p.add_argument("--node_rank", type=int, default=0, help="rank of this machine among --nnodes")
    p.add_argument("--master_addr", default=None,
                   help="address of the node_rank 0 machine; required with --nnodes > 1")
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
    args.config_file, overrides = split_config_files(args.config_file, overrides)
    if args.resume and (args.config_file or overrides):
        p.error("--resume takes the config saved in the run directory; drop --config_file and overrides")
    if not args.resume and not args.config_file:
        p.error("give --config_file (e.g. IDNet/sasrec.yaml overall/ID.yaml) or --resume RUN_DIR")
    check_launch_args(p, args)
    return args, overrides


def check_launch_args(p: argparse.ArgumentParser, args) -> None:
    """Usage errors end the program (status 2); then, for GPUs, restrict this process to the ones asked for and
    check that CUDA sees them, before anything initialises CUDA or writes a run directory."""
    if args.nnodes < 1:
        p.error(f"--nnodes {args.nnodes}: expected the number of machines, at least 1")
    if not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node_rank {args.node_rank}: expected 0 to {args.nnodes - 1}, this machine's place among "
                f"--nnodes {args.nnodes}")
    if args.nnodes > 1 and (args.master_port is None or args.master_addr is None):
        p.error("--nnodes > 1 needs --master_addr and --master_port (the node_rank 0 machine and a free port on it), "
                "the same on every machine, so that all machines meet")
    try:
        args.spec = DeviceSpec.parse(args.device)
        args.spec.check_cores()
    except DeviceError as exc:
        p.error(str(exc))
    if args.spec.kind == "cuda":
        try:
            select_gpus(args.spec)
        except DeviceError as exc:
            p.exit(2, f"error: {exc}\n")


def start_method(spec: DeviceSpec) -> str:
    """How this node's processes start. CPU runs: from a fork server that has imported torch and PixelRec once, so
    the ranks share that interpreter's memory (about 250 MB less per rank than each importing its own; measured by
    bench/bench_scale.py) and start without importing torch again. GPU runs keep ``spawn``: a process forked from
    one in which anything touched CUDA cannot use it, and a GPU rank's host memory matters less."""
    import multiprocessing
    import multiprocessing.forkserver as forkserver
    if spec.kind != "cpu" or "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    # a fork server that other code of this process started (with its own imports, environment and streams) is
    # neither this launch's to configure nor to stop: spawn then, as before
    return "forkserver" if getattr(forkserver._forkserver, "_forkserver_pid", None) is None else "spawn"


@contextlib.contextmanager
def fork_server(entry):
    """The fork server of one launch: it imports what every rank imports, and it is stopped when the launch ends,
    so that a later launch from the same process (tests, a notebook) gets a server with that launch's
    environment, working directory and standard streams, which a forked rank inherits from its server."""
    import multiprocessing
    import multiprocessing.forkserver as forkserver
    modules = ["torch", __name__] + ([entry.__module__] if entry.__module__.startswith("REC.") else [])
    before = list(getattr(forkserver._forkserver, "_preload_modules", []))
    multiprocessing.set_forkserver_preload(modules)
    try:
        yield
    finally:
        stop = getattr(forkserver._forkserver, "_stop", None)  # the module's own stop (it has no public one)
        if stop is not None:
            stop()
        multiprocessing.set_forkserver_preload(before)


def launch_config(args, nproc: int):
    from torch.distributed.launcher.api import LaunchConfig
    if args.nnodes == 1 and args.master_port is None:
        # what torchrun --standalone does: a c10d store on port 0, so the OS assigns a free port
        backend, endpoint, rdzv_configs, run_id = "c10d", "localhost:0", {}, str(uuid.uuid4())
    else:
        backend, endpoint = "static", f"{args.master_addr or '127.0.0.1'}:{args.master_port}"
        rdzv_configs = {"rank": args.node_rank}
        # the static rendezvous prefixes every store key with the run id, so all nodes need the same one (a
        # random id per node means they never meet); the port they were all given names this job's store
        run_id = f"pixelrec-{args.master_port}"
    return LaunchConfig(min_nodes=args.nnodes, max_nodes=args.nnodes, nproc_per_node=nproc,
                        run_id=run_id, rdzv_backend=backend, rdzv_endpoint=endpoint,
                        rdzv_configs=rdzv_configs, max_restarts=0, start_method=start_method(args.spec))


def _fail(status: int, message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(status)


# the environment this module was imported with in a launched process: the fork server's (or, spawned, the
# launcher's), before torch's launcher added the rank's own variables
_STARTING_ENVIRONMENT = dict(os.environ)


def _adopt_launcher_state(environment: dict, cwd: str) -> None:
    """A forked rank starts with its fork server's environment and folder; it takes the launcher's as they are now
    (CUDA_VISIBLE_DEVICES, what the launcher verified, a relative data_path), keeping what torch's launcher set
    for this rank (RANK, LOCAL_RANK, MASTER_PORT, ...): exactly what a spawned rank would have had."""
    per_rank = {k: v for k, v in os.environ.items() if _STARTING_ENVIRONMENT.get(k) != v}
    os.environ.clear()
    os.environ.update(environment)
    os.environ.update(per_rank)
    os.chdir(cwd)


def _process_entry(launcher_state, entry, *entry_args):
    """What each launched process runs: any error is recorded for the launcher (torch's error file); a clear one
    then ends the process with status 2 and no traceback, since the launcher prints its message."""
    _adopt_launcher_state(*launcher_state)
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler
    handler = get_error_handler()
    handler.initialize()
    try:
        return entry(*entry_args)
    except UserError as exc:  # its message says what to fix: one line, status 2
        handler.record_exception(exc)
        sys.exit(2)
    except Exception as exc:
        handler.record_exception(exc)
        raise


def launch(entry, entry_args: tuple, args):
    """Run ``entry(*entry_args)`` here (one process) or on every process of this node; returns the value of this
    node's first process (rank 0's on node 0), since ``elastic_launch`` keys them by global rank. A clear error
    on any process ends the program with status 2 and that error's one-line message; another error with status 1
    and the failing rank's message (its traceback is in that process's output)."""
    spec = args.spec
    try:
        if spec.nproc * args.nnodes == 1:
            return entry(*entry_args)
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.launcher.api import elastic_launch
        config = launch_config(args, spec.nproc)
        starting = fork_server(entry) if config.start_method == "forkserver" else contextlib.nullcontext()
        try:
            with starting:
                results = elastic_launch(config, _process_entry)((dict(os.environ), os.getcwd()), entry, *entry_args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
            if failure.exitcode == 2:
                _fail(2, message.split(": ", 1)[-1])  # drop the exception's class name
            _fail(1, f"rank {rank} failed: {message}")
    except UserError as exc:  # its message says what to fix: one line, status 2
        _fail(2, str(exc))
    return results[min(results)] if results else None


def check_resume(run_dir: str, world: int) -> None:
    """A resumed run keeps its number of processes: data shards and every rank's seeds depend on it, so another
    layout would silently continue a different run. Read from last.pth (mapped, not loaded) before any starts."""
    path = RunDir(run_dir).last
    if not path.is_file():
        return  # killed before its first epoch ended: it starts from epoch 0
    saved = saved_world_size(path)  # a CheckpointError naming the file when it is truncated or corrupt
    if saved is not None and saved != world:
        example = "cpu" if saved == 1 else f"cpu:{saved}"
        raise CheckpointError(f"--resume {run_dir}: its last.pth was written by {saved} process(es) and this launch "
                              f"starts {world}; data sharding and per-rank seeds depend on that number, so resume "
                              f"it on {saved} process(es) in all (e.g. --device {example}); python -m REC evaluate "
                              f"re-evaluates its checkpoints on any layout")


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    setup_logging(None, 0)
    try:
        if args.resume:
            run_dir, config = args.resume, load_run_config(args.resume)
            check_resume(run_dir, args.spec.nproc * args.nnodes)
            preflight(config, resume_dir=run_dir, devices=args.spec, nnodes=args.nnodes)
        elif args.node_rank == 0:
            config, run_dir = create_run(args.config_file, overrides, args.spec, args.nnodes)
        else:  # node 0 makes the run directory; this node checks its config and data now, so errors come early
            config, run_dir = build_config(args.config_file, overrides), None
            preflight(config, devices=args.spec, nnodes=args.nnodes)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = launch(worker, (None if run_dir is None else str(run_dir), args.device, bool(args.resume),
                             config["dist_timeout_s"]), args)
    if args.nnodes > 1 and result is not None:  # rank 0 logs the run; every node says what it saw
        log.info("node %d of %d finished; test: %s", args.node_rank, args.nnodes, json.dumps(result["test"]))
    if args.node_rank == 0:  # the last line of stdout, for scripts: node 0's launcher, once the run succeeded
        print(run_dir_line(run_dir), flush=True)
    return 0
