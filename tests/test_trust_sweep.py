"""The sweep and the config layer at their edges: duplicate keys, overrides with spaces, keys a grid must not
search, grids too large to list, damaged or foreign sweep folders, a config file edited between two runs of a
sweep, two sweeps in one folder, and a killed sweep that must not leave its trial training."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from REC import sweep
from REC.config import ConfigError
from REC.app.configure import build_config
from REC.app.launch import main as launch_main
from REC.app.launch import parse_args

from .conftest import ROOT, call_main

SMALL = ["--n_heads=2", "--n_layers=1", "--show_progress=false"]
BASE = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err[-3000:]
    return lines[-1]


# ------------------------------------------------------------------------------------------------ YAML
def test_a_key_twice_in_a_config_file_is_refused_naming_file_and_lines(tmp_path, capsys):
    config = write(tmp_path / "twice.yaml", "epochs: 3\noptim_args:\n  learning_rate: 0.001\n  weight_decay: 0\n"
                                            "epochs: 5\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'epochs' is given twice, on lines 1 and 5; keep one"):
        build_config(["IDNet/sasrec.yaml", config])
    nested = write(tmp_path / "nested.yaml", "optim_args: {learning_rate: 0.001, learning_rate: 0.5}\n")
    with pytest.raises(ConfigError, match=r"nested.yaml: key 'learning_rate' is given twice, on line 1"):
        build_config(["IDNet/sasrec.yaml", nested])
    status, out, err = call_main(launch_main, [*BASE, config, f"--output_dir={tmp_path / 'runs'}"], capsys)
    assert status == 2 and "key 'epochs' is given twice" in error_line(err)
    assert not (tmp_path / "runs").exists()


def test_a_key_twice_in_a_grid_is_refused(tmp_path, capsys):
    grid = write(tmp_path / "grid.yaml", "embedding_size: [16, 32]\nembedding_size: [64]\n")
    status, out, err = call_main(sweep.main, [*BASE, "--grid", grid, "--dry_run", *SMALL], capsys)
    assert status == 2 and out == ""
    assert f"{grid}: key 'embedding_size' is given twice, on lines 1 and 2" in error_line(err)


def test_a_yaml_date_is_read_as_the_text_it_was_typed_as(tmp_path, capsys):
    grid = write(tmp_path / "grid.yaml", "dataset: [2024-01-01, 2024-02-01]\n")
    status, out, err = call_main(sweep.main, [*BASE, "--grid", grid, "--dry_run", *SMALL], capsys)
    assert status == 0, err
    assert out.splitlines() == ['trial-000 dataset="2024-01-01"', 'trial-001 dataset="2024-02-01"']
    assert build_config(["IDNet/sasrec.yaml"], ["--dataset=2024-01-01"])["dataset"] == "2024-01-01"


# ------------------------------------------------------------------------------------------------ overrides
def test_an_override_with_a_space_after_the_config_files_is_an_override(tmp_path):
    args, overrides = parse_args([*BASE, "--optim_args={learning_rate: 3.0e-3, weight_decay: 0}", "--epochs=2"])
    assert args.config_file == ["IDNet/sasrec.yaml", "overall/ID.yaml"]
    assert overrides == ["--optim_args={learning_rate: 3.0e-3, weight_decay: 0}", "--epochs=2"]
    config = build_config(args.config_file, overrides)
    assert dict(config["optim_args"]) == {"learning_rate": 3.0e-3, "weight_decay": 0}


def test_a_trial_with_list_and_mapping_values_reaches_main_as_overrides(tmp_path):
    """What the sweep passes to main.py must parse back there to the grid's values (it failed every trial when a
    value held a space and was read as a config file)."""
    grid = {"topk": [[5, 10]], "optim_args": [{"learning_rate": 0.002, "weight_decay": 0.1}]}
    trial = {"id": "trial-000", "state": "pending", "overrides": sweep.combination(grid, 0)}
    settings = {"config_files": ["IDNet/sasrec.yaml", "overall/ID.yaml"], "base_overrides": ["--epochs=1"]}
    command, _ = sweep.trial_command(tmp_path, trial, settings, "cpu")
    args, overrides = parse_args(command[4:])  # after python -m REC train
    config = build_config(args.config_file, overrides)
    assert list(config["topk"]) == [5, 10]
    assert dict(config["optim_args"]) == {"learning_rate": 0.002, "weight_decay": 0.1}
    assert config["epochs"] == 1 and config["output_dir"] == str((tmp_path / "trial-000").resolve())


# ------------------------------------------------------------------------------------------------ the grid
@pytest.mark.parametrize("key, words", [
    ("model: [SASRec, GRU4Rec]", ["key 'model' cannot be searched", "one sweep per model"]),
    ("output_dir: [a, b]", ["key 'output_dir' cannot be searched", "--sweep_dir"]),
])
def test_keys_the_sweep_decides_are_refused_in_a_grid(tmp_path, capsys, key, words):
    grid = write(tmp_path / "grid.yaml", key + "\n")
    status, out, err = call_main(sweep.main, [*BASE, "--grid", grid, "--dry_run", *SMALL], capsys)
    line = error_line(err)
    assert status == 2 and str(grid) in line and all(w in line for w in words), line


def test_a_grid_of_billions_is_counted_not_listed(tmp_path, capsys):
    values = ", ".join(str(1e-4 * (i + 1)) for i in range(1000))
    grid = write(tmp_path / "huge.yaml", "".join(f"{k}: [{values}]\n" for k in (
        "optim_args.learning_rate", "optim_args.weight_decay", "hidden_dropout_prob")) + "embedding_size: [16, 32]\n")
    assert sweep.grid_size(sweep.read_grid(grid)) == 2 * 10 ** 9
    t0 = time.monotonic()
    status, out, err = call_main(sweep.main, [*BASE, "--grid", grid, "--dry_run", *SMALL], capsys)
    assert status == 2 and "the grid has 2,000,000,000 combinations" in error_line(err) and "--trials" in err
    status, out, err = call_main(sweep.main, [*BASE, "--grid", grid, "--trials", "3", "--dry_run", *SMALL], capsys)
    assert status == 0, err
    assert len(out.splitlines()) == 3
    assert time.monotonic() - t0 < 60  # generous: listing the grid would take hours and gigabytes


# ------------------------------------------------------------------------------------------------ the folder
def test_a_sweep_dir_that_is_a_file_is_refused(tmp_path, capsys):
    grid = write(tmp_path / "grid.yaml", "embedding_size: [16]\n")
    target = write(tmp_path / "not-a-folder", "x")
    status, _, err = call_main(sweep.main, [*BASE, "--grid", grid, "--sweep_dir", target, *SMALL], capsys)
    assert status == 2 and f"--sweep_dir {str(target)!r} is a file" in error_line(err)


def open_recorded_sweep(tmp_path: Path, config: Path, grid: Path) -> list[str]:
    """A sweep recorded on disk exactly as the command records it, with no trial run yet; returns its command."""
    argv = ["--config_file", "IDNet/sasrec.yaml", str(config), "--grid", str(grid), "--sweep_dir",
            str(tmp_path / "sweep"), *SMALL]
    args, overrides = sweep.parse_args(argv)
    settings, combos, base = sweep.prepare(args, overrides)
    record, lock = sweep.open_sweep(args, sweep.sweep_folder(args, base), settings, combos, base)
    lock.close()
    return argv


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"config_files": []}', "missing ["),
    (None, "trial 0 is not an object"),
    ("{not json", "not a readable sweep record"),
])
def test_a_damaged_sweep_record_is_one_line(tmp_path, capsys, text, words):
    config = write(tmp_path / "base.yaml", "inherit: " + str(ROOT / "overall/ID.yaml") + "\n")
    argv = open_recorded_sweep(tmp_path, config, write(tmp_path / "grid.yaml", "embedding_size: [16, 32]\n"))
    path = tmp_path / "sweep" / "sweep.json"
    if text is None:
        record = json.loads(path.read_text())
        record["trial_list"][0] = {"id": "trial-000", "state": "exploded", "overrides": {}}
        text = json.dumps(record)
    path.write_text(text)
    status, out, err = call_main(sweep.main, argv, capsys)
    line = error_line(err)
    assert status == 2 and str(path) in line and words in line, line
    assert "trial-000" not in out


def test_a_config_file_edited_between_two_runs_of_a_sweep_is_refused(tmp_path, capsys):
    config = write(tmp_path / "base.yaml", "inherit: " + str(ROOT / "overall/ID.yaml") + "\nepochs: 3\n")
    argv = open_recorded_sweep(tmp_path, config, write(tmp_path / "grid.yaml", "embedding_size: [16, 32]\n"))
    record = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert record["resolved"]["epochs"] == 3
    config.write_text(config.read_text().replace("epochs: 3", "epochs: 7"))  # same name, other contents
    status, out, err = call_main(sweep.main, argv, capsys)
    line = error_line(err)
    assert status == 2 and "the config files' contents: epochs recorded 3, now 7" in line, line
    assert "trial-000" not in out and not list((tmp_path / "sweep").glob("trial-*"))


def test_two_sweeps_in_one_folder_are_refused(tmp_path, capsys, monkeypatch):
    config = write(tmp_path / "base.yaml", "inherit: " + str(ROOT / "overall/ID.yaml") + "\n")
    argv = open_recorded_sweep(tmp_path, config, write(tmp_path / "grid.yaml", "embedding_size: [16, 32]\n"))
    monkeypatch.setattr(sweep, "LOCK_WAIT_S", 0.5)
    holder = sweep.SweepLock(tmp_path / "sweep")  # what the first sweep (or its orphaned trial) holds
    try:
        status, out, err = call_main(sweep.main, argv, capsys)
    finally:
        holder.close()
    line = error_line(err)
    assert status == 2 and "is in use by another sweep" in line and f"process {os.getpid()}" in line, line
    assert not list((tmp_path / "sweep").glob("trial-*"))


def test_cpu_processes_beyond_the_cores_are_refused(tmp_path, capsys):
    cores = len(os.sched_getaffinity(0))
    status, _, err = call_main(launch_main, [*BASE, "--device", f"cpu:{cores + 1}"], capsys)
    assert status == 2 and f"--device cpu:{cores + 1}: this machine gives the job {cores} CPU core(s)" in err
    grid = write(tmp_path / "grid.yaml", "embedding_size: [16]\n")
    status, _, err = call_main(sweep.main, [*BASE, "--grid", grid, "--device", f"cpu:{cores * 4}", "--dry_run"],
                               capsys)
    assert status == 2 and f"ask for at most cpu:{cores}" in error_line(err)


# ------------------------------------------------------------------------------------------------ ownership
def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def running_trial_pid(sweep_dir: Path, sweep_pid: int) -> int | None:
    try:
        record = json.loads((sweep_dir / "sweep.json").read_text())
        holder = int((sweep_dir / "sweep.lock").read_text().strip())
    except (OSError, ValueError):
        return None
    try:  # the lock names the sweep, or its trial once one runs (and, until a rerun starts one, the last holder)
        is_trial = b"-m\x00REC\x00train" in Path(f"/proc/{holder}/cmdline").read_bytes()
    except OSError:
        return None
    return holder if record["trial_list"][0]["state"] == "running" and is_trial else None


@pytest.mark.slow
def test_a_stopped_or_killed_sweep_takes_its_trial_with_it(seq_data, tmp_path):
    """SIGTERM: the sweep stops its trial's process group and exits 143, the trial left `running` to resume.
    kill -9 of the sweep alone: the kernel stops the trial (it would otherwise train on, unowned, and a rerun
    would start the same trial beside it)."""
    grid = write(tmp_path / "grid.yaml", "embedding_size: [16]\n")
    sweep_dir = tmp_path / "sweep"
    argv = [*BASE, "--grid", str(grid), "--sweep_dir", str(sweep_dir), f"--data_path={seq_data}", "--dataset=Seq",
            "--epochs=200", "--eval_step=50", *SMALL]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for how in ("SIGTERM", "SIGKILL"):
        out_path = tmp_path / f"sweep-{how}.out"
        proc = subprocess.Popen([sys.executable, "-m", "REC", "sweep", *argv], cwd=ROOT, env=env, text=True,
                                stdout=open(out_path, "w"), stderr=subprocess.STDOUT)
        try:
            trial = wait_for(lambda: running_trial_pid(sweep_dir, proc.pid) or proc.poll() is not None, 120,
                             "the trial to start")
            assert proc.poll() is None, out_path.read_text()
            time.sleep(2)  # into main.py's start-up
            assert alive(trial), (sweep_dir / "trial-000.log").read_text() + out_path.read_text()
            os.kill(proc.pid, getattr(signal, how))  # the sweep only, not its group
            proc.wait(timeout=60)
            out = out_path.read_text()
            wait_for(lambda: not alive(trial), 40, f"the trial {trial} to end after the sweep got {how}")
        finally:
            if proc.poll() is None:
                proc.kill()
        record = json.loads((sweep_dir / "sweep.json").read_text())
        assert record["trial_list"][0]["state"] == "running"  # resumable, not failed
        if how == "SIGTERM":
            assert proc.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM during trial-000" in out, out
