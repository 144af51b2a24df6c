"""Hyper-parameter search: python -m REC sweep --config_file ... --grid sweeps/demo.yaml [--trials N] [--key=value ...]

Each trial is an ordinary ``main.py`` run in a child process, so a sweep trains exactly what a single run would
(same config layer, same launcher, same run directory) and a crash or an out-of-memory trial cannot take the
sweep down with it. Every trial's config is built before the first one starts, so a typo in the sweep file costs
nothing. ``<sweep_dir>/sweep.json`` is rewritten atomically at every state change: it is the record that a rerun
of the same command with ``--sweep_dir`` resumes from, after a crash, a kill or a reboot.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..config import split_config_files
from ..config.config import ConfigLayer, parse_overrides, parse_yaml_text
from .configure import build_config
from ..distributed import DeviceError, DeviceSpec
from ..utils.files import write_text_atomic
from ..utils.run_dir_line import RUN_DIR_PREFIX
from ..utils.run_layout import CONFIG_FILE, RESULT_FILE, SWEEP_FILE, RunDir
from ..utils.errors import UserError

SUMMARY_FILE = "summary.csv"
LOCK_FILE = "sweep.lock"
# a trial runs the train command of this same package (``python -m REC train`` = main.py), found through
# PYTHONPATH: an installed package has no main.py beside it, a checkout's cwd may be anywhere
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds REC/
TRAIN = ["-m", "REC", "train"]
# what must match for a rerun to continue a sweep: any of these changes which trials exist or what they train;
# `resolved` is the base config after merging (the files' contents, not only their names)
RECORDED = ("config_files", "base_overrides", "grid", "trials", "seed", "resolved")
STATES = ("pending", "running", "done", "failed")
MAX_FULL_GRID = 10_000  # beyond this a grid is sampled (--trials): every trial's config is checked before any runs
LOCK_WAIT_S = 20  # a trial orphaned by a kill -9 is told to stop by the kernel; give it this long to let go
# keys the sweep itself decides, which a grid must not search
NOT_SEARCHABLE = {
    "model": "each model has its own config file and keys; run one sweep per model (--config_file "
             "IDNet/<model>.yaml ...)",
    "output_dir": "every trial runs under --sweep_dir/<trial id>; choose the sweep's folder with --sweep_dir",
}


class SweepError(UserError, ValueError):
    """Bad input to the sweep itself (sweep file, options, a sweep directory that does not match): status 2."""


# ----------------------------------------------------------------------------------------------- the grid
def read_grid(path: str | Path) -> dict[str, list]:
    """The sweep file: key -> list of values, read with the config layer's YAML rules (``1e-4`` is a float there,
    a string in plain YAML), so a value means in a sweep what it means in a config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"--grid {str(path)!r}: cannot read it ({exc.strerror})") from None
    data = parse_yaml_text(text, str(path))
    if not isinstance(data, dict) or not data:
        raise SweepError(f"{path}: expected a mapping of config key -> list of values, e.g. "
                         f"'optim_args.learning_rate: [1e-3, 1e-4]'")
    for key, values in data.items():
        if not isinstance(values, list):
            raise SweepError(f"{path}: key {key!r} = {values!r}; expected a list of values to try, e.g. "
                             f"'{key}: [{values!r}]' for a single one")
        if not values:
            raise SweepError(f"{path}: key {key!r} has an empty list; give at least one value")
        if key in NOT_SEARCHABLE:
            raise SweepError(f"{path}: key {key!r} cannot be searched: {NOT_SEARCHABLE[key]}")
        seen = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(seen)) != len(seen):
            raise SweepError(f"{path}: key {key!r} lists the same value twice: {values}")
    return {str(k): v for k, v in data.items()}


def grid_size(grid: dict[str, list]) -> int:
    return math.prod(len(v) for v in grid.values())


def combination(grid: dict[str, list], index: int) -> dict:
    """The ``index``-th combination of the full grid in its stable order (file order of keys, the last key varying
    fastest), decoded without listing the grid, which for the paper's ranges runs into thousands."""
    values = {}
    for key in reversed(list(grid)):
        index, i = divmod(index, len(grid[key]))
        values[key] = grid[key][i]
    return {key: values[key] for key in grid}


def plan(grid: dict[str, list], trials: int | None, seed: int) -> list[dict]:
    """Every combination in grid order, or ``trials`` distinct ones drawn with ``seed`` (the same on every run).
    The grid is counted before anything is listed, and a sample is drawn from the range of indices, so a grid of
    billions costs nothing until its chosen trials are decoded."""
    total = grid_size(grid)
    if trials is None:
        if total > MAX_FULL_GRID:
            raise SweepError(f"the grid has {total:,} combinations, more than the {MAX_FULL_GRID:,} a full sweep "
                             f"runs; draw a sample with --trials N")
        return [combination(grid, i) for i in range(total)]
    if not 1 <= trials <= min(total, MAX_FULL_GRID):
        raise SweepError(f"--trials {trials}: the grid has {total:,} combination(s); ask for 1 to "
                         f"{min(total, MAX_FULL_GRID):,}")
    return [combination(grid, i) for i in random.Random(seed).sample(range(total), trials)]


def as_override(key: str, value) -> str:
    """A ``--key=value`` that the config layer parses back to ``value`` (JSON is YAML's flow syntax)."""
    return f"--{key}={json.dumps(value, separators=(',', ':'))}"


def trial_overrides(values: dict) -> list[str]:
    return [as_override(k, v) for k, v in values.items()]


def describe(values: dict) -> str:
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


# ----------------------------------------------------------------------------------------------- the record
def save(sweep_dir: Path, record: dict) -> None:
    write_text_atomic(sweep_dir / SWEEP_FILE, json.dumps(record, indent=2) + "\n")


def check_same(recorded: dict, settings: dict, sweep_dir: Path) -> None:
    """A rerun continues the recorded sweep only when it would plan the same trials with the same settings,
    including what the config files now say (a file edited between two runs of the sweep would otherwise train
    its remaining trials under other settings and rank them with the finished ones)."""
    if "resolved" not in recorded:  # written before contents were recorded: names are all that can be compared
        print(f"warning: {sweep_dir / SWEEP_FILE} does not record the config files' contents (an older version "
              f"wrote it); only their names are compared", file=sys.stderr)
        recorded = {**recorded, "resolved": settings["resolved"]}
    differ = [k for k in RECORDED if k != "resolved" and recorded.get(k) != settings[k]]
    lines = [f"{k}: recorded {json.dumps(recorded.get(k))}, now {json.dumps(settings[k])}" for k in differ]
    if recorded["resolved"] != settings["resolved"]:
        was, now = recorded["resolved"], settings["resolved"]
        keys = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        lines.append("the config files' contents: " + ", ".join(
            f"{k} recorded {json.dumps(was.get(k))}, now {json.dumps(now.get(k))}" for k in keys[:5])
            + (", ..." if len(keys) > 5 else ""))
    if lines:
        raise SweepError(f"--sweep_dir {str(sweep_dir)!r} holds a sweep with other settings ({'; '.join(lines)}); "
                         f"rerun it with its recorded settings, or choose another --sweep_dir for a new sweep")


def check_record(record, path: Path) -> dict:
    """A sweep.json read back must have the shape this module writes, else one line instead of a KeyError."""
    def bad(what: str) -> SweepError:
        return SweepError(f"{path}: not a sweep record ({what}); restore it, or choose another --sweep_dir")
    if not isinstance(record, dict):
        raise bad(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in (*RECORDED[:-1], "valid_metric", "trial_list") if k not in record]
    if missing:
        raise bad(f"missing {missing}")
    if not isinstance(record["trial_list"], list):
        raise bad("'trial_list' is not a list")
    for n, trial in enumerate(record["trial_list"]):
        if not (isinstance(trial, dict) and isinstance(trial.get("id"), str) and isinstance(trial.get("overrides"),
                                                                                         dict)
                and trial.get("state") in STATES):
            raise bad(f"trial {n} is not an object with an 'id', its 'overrides' and a 'state' among {list(STATES)}")
    return record


def trial_run_dir(sweep_dir: Path, trial: dict) -> Path | None:
    """The run directory a trial's main.py made inside its own output folder (the newest, when a trial that was
    killed before its first checkpoint was started again)."""
    runs = list((sweep_dir / trial["id"]).glob(f"*/{CONFIG_FILE}"))
    return max(runs, key=lambda p: p.stat().st_mtime).parent.resolve() if runs else None


def trial_command(sweep_dir: Path, trial: dict, settings: dict, device: str) -> tuple[list[str], str]:
    """main.py's arguments for a trial, and how it starts: a trial left ``running`` by a killed sweep continues
    from its last checkpoint when it wrote one (main.py --resume), and starts again otherwise."""
    head = [sys.executable, *TRAIN, "--device", device]
    if trial["state"] == "running":
        run_dir = trial_run_dir(sweep_dir, trial)
        if run_dir is not None and RunDir(run_dir).last.is_file():
            return head + ["--resume", str(run_dir)], f"resuming from {RunDir(run_dir).last}"
    output = f"--output_dir={json.dumps(str((sweep_dir / trial['id']).resolve()))}"
    return (head + ["--config_file", *settings["config_files"], *settings["base_overrides"],
                    *trial_overrides(trial["overrides"]), output], "starting")


def last_run_dir(log_path: Path) -> Path | None:
    lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.startswith(RUN_DIR_PREFIX)]
    return Path(lines[-1][len(RUN_DIR_PREFIX):]) if lines else None


def last_error(log_path: Path) -> str:
    lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:500]


# ----------------------------------------------------------------------------------------------- owning trials
class Stopped(Exception):
    """The sweep was asked to stop (SIGTERM, SIGHUP or Ctrl-C); its running trial is stopped with it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


class SweepLock:
    """One sweep at a time per folder: an exclusive ``flock`` on ``sweep.lock``, held by the sweep and inherited
    by its running trial, so that neither a second sweep nor a rerun beside a trial orphaned by ``kill -9`` can
    start the same trials again (the kernel releases it when the last holder exits, however it ends)."""

    def __init__(self, sweep_dir: Path, wait_s: float | None = None):
        import fcntl
        self.path = sweep_dir / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(self.fd)
                    raise SweepError(f"--sweep_dir {str(sweep_dir)!r} is in use by another sweep, or by a trial a "
                                     f"killed sweep left running (process {holder}, from {self.path}); wait for it "
                                     f"to end or stop it, then rerun") from None
                time.sleep(0.2)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock goes with the last descriptor (a running trial may still hold one)
            self.fd = None

    def note_trial(self, pid: int) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)  # the holder a second sweep names, should the sweep die


def _die_with_parent() -> None:
    """In the trial, before main.py starts: the kernel sends it SIGTERM when the sweep dies, even by kill -9
    (Linux), so no trial trains on unowned."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_trial(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to the trial's whole process group (main.py and the processes it launched), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_trial(sweep_dir: Path, record: dict, trial: dict, device: str, lock: SweepLock) -> None:
    command, how = trial_command(sweep_dir, trial, record, device)
    log_path = sweep_dir / f"{trial['id']}.log"
    print(f"[{trial['id']}] {how}: {describe(trial['overrides'])}", flush=True)
    resumed = command[command.index("--resume") + 1] if "--resume" in command else None
    trial.update(state="running", error=None, run_dir=resumed)
    save(sweep_dir, record)
    start = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {' '.join(command)}\n")
        log.flush()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                         os.environ.get("PYTHONPATH")])))
        # its own process group, so that stopping it reaches every process it started; the lock passed down
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                pass_fds=(lock.fd,), preexec_fn=_die_with_parent)
        lock.note_trial(proc.pid)
        try:
            status = proc.wait()
        except BaseException:  # Stopped, KeyboardInterrupt: the trial stays `running`, resumable
            stop_trial(proc)
            trial["seconds"] = round(time.monotonic() - start, 1)
            save(sweep_dir, record)
            raise
        finally:
            lock.note_trial(os.getpid())
    trial["seconds"] = round(time.monotonic() - start, 1)  # of this attempt
    run_dir = last_run_dir(log_path) if status == 0 else None
    result_path = RunDir(run_dir).result if run_dir else None
    if result_path is not None and result_path.is_file():
        result = json.loads(result_path.read_text())
        trial.update(state="done", run_dir=str(run_dir), valid=result.get("best_valid"), test=result.get("test"),
                     best_epoch=result.get("best_epoch"), returncode=0)
    else:
        found = trial_run_dir(sweep_dir, trial)
        trial.update(state="failed", run_dir=str(found) if found else None, returncode=status,
                     error=last_error(log_path) if status else f"no {RUN_DIR_PREFIX} line or {RESULT_FILE}")
    save(sweep_dir, record)


# ----------------------------------------------------------------------------------------------- reporting
def metric(trial: dict, part: str, key: str):
    return (trial.get(part) or {}).get(key)


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def progress_line(trial: dict, key: str, n: int, total: int) -> str:
    if trial["state"] != "done":
        return (f"[{trial['id']} {n}/{total}] {trial['state']} (status {trial.get('returncode')}) after "
                f"{trial.get('seconds')}s: {trial.get('error')}; log in {trial['id']}.log")
    return (f"[{trial['id']} {n}/{total}] {describe(trial['overrides'])}  valid {key}={fmt(metric(trial, 'valid', key))}"
            f"  test {key}={fmt(metric(trial, 'test', key))}  {trial['seconds']:.0f}s")


def ranked(trials: list[dict], key: str) -> list[dict]:
    """Finished trials best first by the validation metric (what model selection uses; test is only reported);
    the others after them in trial order."""
    def order(t):
        v = metric(t, "valid", key)
        unusable = not isinstance(v, (int, float)) or math.isnan(v)  # never validated, or NaN: never ranked first
        return (t["state"] != "done" or unusable, 0.0 if unusable else -v)
    return sorted(trials, key=order)


def table(trials: list[dict], key: str) -> str:
    rows = [["trial", "state", f"valid {key}", f"test {key}", "seconds", "overrides"]]
    for t in ranked(trials, key):
        rows.append([t["id"], t["state"], fmt(metric(t, "valid", key)), fmt(metric(t, "test", key)),
                     "-" if t.get("seconds") is None else f"{t['seconds']:.0f}", describe(t["overrides"])])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def write_summary(sweep_dir: Path, record: dict, key: str) -> Path:
    trials = record["trial_list"]
    metrics = sorted({m for t in trials for part in ("valid", "test") for m in (t.get(part) or {})})
    header = ["trial", "state", *record["grid"], *(f"valid_{m}" for m in metrics), *(f"test_{m}" for m in metrics),
              "best_epoch", "seconds", "run_dir"]
    lines = []
    for t in ranked(trials, key):
        lines.append([t["id"], t["state"], *(json.dumps(t["overrides"].get(k)) for k in record["grid"]),
                      *(metric(t, "valid", m) for m in metrics), *(metric(t, "test", m) for m in metrics),
                      t.get("best_epoch"), t.get("seconds"), t.get("run_dir")])
    path = sweep_dir / SUMMARY_FILE
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(["" if x is None else x for x in row] for row in lines)
    return path


# ----------------------------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m REC sweep", description="Hyper-parameter search: one main.py run per combination.",
        epilog="Any --key=value after the options overrides a config key in every trial. Rerun the same command "
               "with --sweep_dir <the sweep's folder> to resume it: finished trials are kept, a killed one "
               "continues from its checkpoint, failed ones are tried again.")
    p.add_argument("--config_file", nargs="+", required=True, metavar="YAML", help="config files, as for main.py")
    p.add_argument("--grid", required=True, metavar="YAML", help="sweep file: config key -> list of values")
    p.add_argument("--trials", type=int, default=None, metavar="N",
                   help="draw N distinct combinations at random instead of running the full grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the --trials draw (default 0)")
    p.add_argument("--device", default="cpu", help="passed to every main.py run: cpu, cpu:N or GPU ids such as 0,1")
    p.add_argument("--sweep_dir", default=None, metavar="DIR",
                   help="the sweep's folder; an existing sweep there is resumed (default: a new "
                        "<output_dir>/sweep-<model>-<dataset>-<time>)")
    p.add_argument("--dry_run", action="store_true", help="check every trial's config, list the trials and stop")
    args, overrides = p.parse_known_args(argv)
    args.config_file, overrides = split_config_files(args.config_file, overrides)
    return args, overrides


def resolved(config) -> dict:
    """The merged config as JSON keeps it (what sweep.json records and a rerun compares)."""
    return json.loads(json.dumps(config.to_dict(), sort_keys=True))


def prepare(args, overrides: list[str]) -> tuple[dict, list[dict], object]:
    """What is checked before any trial config: the sweep file, the options, the base config."""
    parse_overrides(overrides)  # a malformed --key=value is named now, not by the first trial
    try:
        DeviceSpec.parse(args.device).check_cores()  # else every trial fails with it
    except DeviceError as exc:
        raise SweepError(str(exc)) from None
    grid = read_grid(args.grid)
    given = {k for k, _ in parse_overrides(overrides)}
    clash = sorted(given & set(grid))
    if clash:
        raise SweepError(f"{args.grid}: key(s) {clash} are both searched and set on the command line; drop one")
    combos = plan(grid, args.trials, args.seed)
    base = build_config(args.config_file, overrides)
    settings = {"config_files": list(args.config_file), "base_overrides": list(overrides), "grid": grid,
                "trials": args.trials, "seed": args.seed, "resolved": resolved(base)}
    return settings, combos, base


def checked_trials(args, overrides: list[str], combos: list[dict]):
    """Every trial's full config, built in turn (a few ms each), yielding its index and values once it passed."""
    for i, values in enumerate(combos):
        # the trial's values as a layer named after the sweep file, so that a message names the file and the key
        # (they reach main.py as --key=value overrides, which the clash check makes equivalent)
        build_config([*args.config_file, ConfigLayer(f"{args.grid} (trial-{i:03d}: {describe(values)})", values)],
                     overrides)
        yield i, values


def sweep_folder(args, base) -> Path:
    if args.sweep_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        return (Path(base["output_dir"]) / f"sweep-{base['model']}-{base['dataset']}-{stamp}").resolve()
    sweep_dir = Path(args.sweep_dir).resolve()
    if sweep_dir.exists() and not sweep_dir.is_dir():
        raise SweepError(f"--sweep_dir {args.sweep_dir!r} is a file; name a folder (new, empty, or a sweep's)")
    return sweep_dir


def open_sweep(args, sweep_dir: Path, settings: dict, combos: list[dict], base) -> tuple[dict, SweepLock]:
    """The sweep's record, resumed or new, and the folder's lock, which the caller holds until the sweep ends."""
    path = sweep_dir / SWEEP_FILE
    if not path.is_file() and sweep_dir.exists() and any(p.name != LOCK_FILE for p in sweep_dir.iterdir()):
        raise SweepError(f"--sweep_dir {str(sweep_dir)!r} exists without a {SWEEP_FILE}; choose a new or empty folder")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"--sweep_dir {str(sweep_dir)!r}: cannot create it ({exc.strerror})") from None
    lock = SweepLock(sweep_dir)
    if path.is_file():
        try:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SweepError(f"{path}: not a readable sweep record ({exc})") from None
            record = check_record(data, path)
            check_same(record, settings, sweep_dir)
        except SweepError:
            lock.close()
            raise
        record.setdefault("resolved", settings["resolved"])
        return record, lock
    record = {**settings, "mode": "grid" if args.trials is None else "random", "grid_size": grid_size(settings["grid"]),
              "valid_metric": str(base["valid_metric"]).lower(), "created": datetime.datetime.now().isoformat(
                  timespec="seconds"),
              "trial_list": [{"id": f"trial-{i:03d}", "overrides": values, "state": "pending", "run_dir": None,
                              "valid": None, "test": None} for i, values in enumerate(combos)]}
    save(sweep_dir, record)
    return record, lock


def main(argv=None) -> int:
    args, overrides = parse_args(argv)
    try:
        settings, combos, base = prepare(args, overrides)
        if args.dry_run:  # each trial printed once its config passed, so a long grid shows progress
            for i, values in checked_trials(args, overrides, combos):
                print(f"trial-{i:03d} {describe(values)}", flush=True)
            return 0
        sweep_dir = sweep_folder(args, base)
        for _ in checked_trials(args, overrides, combos):
            pass
        record, lock = open_sweep(args, sweep_dir, settings, combos, base)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    handlers = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return run_sweep(args, sweep_dir, record, lock)
    finally:
        lock.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_sweep(args, sweep_dir: Path, record: dict, lock: SweepLock) -> int:
    key = record["valid_metric"]
    trials = record["trial_list"]
    done = sum(t["state"] == "done" for t in trials)
    print(f"sweep {sweep_dir}: {len(trials)} trial(s), {done} done already; resume with the same command and "
          f"--sweep_dir {sweep_dir}", flush=True)
    for n, trial in enumerate(trials, 1):
        if trial["state"] == "done":
            continue
        if trial["state"] == "failed":
            print(f"[{trial['id']}] failed before ({trial.get('error')}); trying again", flush=True)
        try:
            run_trial(sweep_dir, record, trial, args.device, lock)
        except (KeyboardInterrupt, Stopped) as exc:  # the trial stays `running`: a rerun continues it
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {exc}"
            print(f"\n{why} during {trial['id']} (stopped with it); resume with the same command and --sweep_dir "
                  f"{sweep_dir}", file=sys.stderr)
            return 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.signum
        print(progress_line(trial, key, n, len(trials)), flush=True)
    print(table(trials, key))
    print(f"summary: {write_summary(sweep_dir, record, key)}")
    failed = [t["id"] for t in trials if t["state"] != "done"]
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}; their logs are in {sweep_dir}; rerun the "
              f"command with --sweep_dir {sweep_dir} to retry them", file=sys.stderr)
        return 1
    return 0
