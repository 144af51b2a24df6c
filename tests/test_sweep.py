"""python -m REC sweep: a real 2 x 2 sweep killed during its third trial and resumed, and the input checks that must
fail before any trial runs."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from REC import sweep
from tests.conftest import ROOT, call_main

SMALL = ["--n_heads=2", "--n_layers=1", "--show_progress=false"]  # conftest's SMALL without embedding_size
GRID = "optim_args.learning_rate: [0.001, 0.002]\nembedding_size: [16, 32]\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def sweep_args(data: Path, grid: Path, sweep_dir: Path, *extra: str) -> list[str]:
    return ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "--grid", str(grid), "--sweep_dir",
            str(sweep_dir), f"--data_path={data}", "--dataset=Seq", "--epochs=3", *SMALL, *extra]


def read_record(sweep_dir: Path) -> dict | None:
    try:
        return json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError):
        return None


def start_sweep(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "REC", "sweep", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def killed_and_resumed(seq_data, tmp_path_factory):
    """A 2 x 2 sweep killed (process group, SIGKILL) once 2 trials are done and the 3rd is running, preferably
    after the 3rd wrote its first checkpoint; then the same command again. Returns what both saw."""
    tmp = tmp_path_factory.mktemp("sweep")
    grid, sweep_dir = write(tmp / "grid.yaml", GRID), tmp / "sweep"
    args = sweep_args(seq_data, grid, sweep_dir)
    proc = start_sweep(args)
    deadline, checkpoint_wait = time.monotonic() + 150, None
    try:
        while True:
            assert proc.poll() is None, f"the sweep ended before it was killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "the sweep never reached its 3rd trial"
            record = read_record(sweep_dir)
            states = [t["state"] for t in record["trial_list"]] if record else []
            if states[:3] == ["done", "done", "running"]:
                checkpoint_wait = checkpoint_wait or time.monotonic()
                has_last = any((sweep_dir / "trial-002").glob("*/last.pth"))
                if has_last or time.monotonic() - checkpoint_wait > 20:
                    break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = read_record(sweep_dir)
    finished = {t["id"]: (t["run_dir"], (Path(t["run_dir"]) / "result.json").stat().st_mtime_ns)
                for t in before["trial_list"] if t["state"] == "done"}
    again = start_sweep(args)
    out, _ = again.communicate(timeout=240)
    return {"before": before, "finished": finished, "status": again.returncode, "out": out,
            "after": read_record(sweep_dir), "sweep_dir": sweep_dir, "grid": grid, "args": args,
            "had_checkpoint": has_last}


@pytest.mark.slow
def test_grid_runs_every_trial_in_its_own_run_directory(killed_and_resumed):
    after = killed_and_resumed["after"]
    assert killed_and_resumed["status"] == 0, killed_and_resumed["out"]
    trials = after["trial_list"]
    assert [t["id"] for t in trials] == ["trial-000", "trial-001", "trial-002", "trial-003"]
    assert [t["state"] for t in trials] == ["done"] * 4
    assert [t["overrides"] for t in trials] == [
        {"optim_args.learning_rate": lr, "embedding_size": d} for lr in (0.001, 0.002) for d in (16, 32)]
    run_dirs = {t["run_dir"] for t in trials}
    assert len(run_dirs) == 4
    for t in trials:
        run_dir = Path(t["run_dir"])
        assert run_dir.parent == killed_and_resumed["sweep_dir"] / t["id"]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["embedding_size"] == t["overrides"]["embedding_size"]
        assert config["optim_args"]["learning_rate"] == t["overrides"]["optim_args.learning_rate"]
        assert config["epochs"] == 3  # a base override reaches every trial
        result = json.loads((run_dir / "result.json").read_text())
        assert t["valid"] == result["best_valid"] and t["test"] == result["test"]
        assert "ndcg@10" in t["valid"]
    with open(killed_and_resumed["sweep_dir"] / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["trial"] for r in rows) == [t["id"] for t in trials]
    valid = [float(r["valid_ndcg@10"]) for r in rows]
    assert valid == sorted(valid, reverse=True)
    assert "valid ndcg@10" in killed_and_resumed["out"]  # the final table


@pytest.mark.slow
def test_resume_keeps_finished_trials_and_continues_the_killed_one(killed_and_resumed):
    before, after = killed_and_resumed["before"], killed_and_resumed["after"]
    assert [t["state"] for t in before["trial_list"]] == ["done", "done", "running", "pending"]
    assert killed_and_resumed["status"] == 0, killed_and_resumed["out"]
    for trial_id, (run_dir, mtime) in killed_and_resumed["finished"].items():
        trial = next(t for t in after["trial_list"] if t["id"] == trial_id)
        assert trial["run_dir"] == run_dir
        assert (Path(run_dir) / "result.json").stat().st_mtime_ns == mtime
        assert len(list((killed_and_resumed["sweep_dir"] / trial_id).glob("*/config.yaml"))) == 1
    log = (killed_and_resumed["sweep_dir"] / "trial-002.log").read_text()
    if killed_and_resumed["had_checkpoint"]:  # it continued in the same run directory
        assert "--resume" in log
        assert len(list((killed_and_resumed["sweep_dir"] / "trial-002").glob("*/config.yaml"))) == 1
    assert "[trial-000]" not in killed_and_resumed["out"] and "[trial-001]" not in killed_and_resumed["out"]
    assert "[trial-002]" in killed_and_resumed["out"] and "[trial-003]" in killed_and_resumed["out"]


@pytest.mark.slow
def test_resume_with_another_grid_is_refused(killed_and_resumed, tmp_path, capsys):
    other = write(tmp_path / "other.yaml", GRID.replace("0.002", "0.003"))
    args = list(killed_and_resumed["args"])
    args[args.index("--grid") + 1] = str(other)
    stamp = (killed_and_resumed["sweep_dir"] / "sweep.json").stat().st_mtime_ns
    status, _, err = call_main(sweep.main, args, capsys)
    assert status == 2
    assert "grid" in err and "0.003" in err and "--sweep_dir" in err
    assert (killed_and_resumed["sweep_dir"] / "sweep.json").stat().st_mtime_ns == stamp
    args = [a.replace("--epochs=3", "--epochs=4") for a in killed_and_resumed["args"]]  # base overrides differ
    status, _, err = call_main(sweep.main, args, capsys)
    assert status == 2 and "base_overrides" in err


def test_a_killed_trial_resumes_from_its_checkpoint_or_starts_again(tmp_path):
    settings = {"config_files": ["IDNet/sasrec.yaml"], "base_overrides": ["--epochs=2"]}
    trial = {"id": "trial-002", "state": "running", "overrides": {"embedding_size": 16}}
    run_dir = tmp_path / "trial-002" / "SASRec-Seq-x"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: SASRec\n")
    command, how = sweep.trial_command(tmp_path, trial, settings, "cpu")
    assert "--resume" not in command and how == "starting"
    assert "--embedding_size=16" in command and "--epochs=2" in command
    (run_dir / "last.pth").write_bytes(b"")
    command, how = sweep.trial_command(tmp_path, trial, settings, "cpu")
    assert command[-2:] == ["--resume", str(run_dir.resolve())] and how.startswith("resuming")
    command, _ = sweep.trial_command(tmp_path, {**trial, "state": "failed"}, settings, "cpu")
    assert "--resume" not in command  # a failed trial starts again


def test_random_trials_are_distinct_and_reproducible(tmp_path, capsys):
    grid = write(tmp_path / "grid.yaml", GRID + "optim_args.weight_decay: [0.0, 0.1]\n")
    args = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "--grid", grid, "--trials", "3", "--seed", "1",
            "--dry_run", *SMALL]
    status, first, _ = call_main(sweep.main, args, capsys)
    assert status == 0
    status, second, _ = call_main(sweep.main, args, capsys)
    lines = first.strip().splitlines()
    assert first == second and len(lines) == 3
    assert len({line.split(" ", 1)[1] for line in lines}) == 3
    assert sweep.plan(sweep.read_grid(grid), 3, 1) == sweep.plan(sweep.read_grid(grid), 3, 1)
    assert sweep.plan(sweep.read_grid(grid), 3, 1) != sweep.plan(sweep.read_grid(grid), 3, 2)
    assert sorted(map(str, sweep.plan(sweep.read_grid(grid), 8, 5))) == sorted(
        map(str, sweep.plan(sweep.read_grid(grid), None, 0)))  # a draw of the whole grid is the whole grid
    status, _, err = call_main(sweep.main, [*args[:-len(SMALL) - 1], "--trials", "9"], capsys)
    assert status == 2 and "8 combination" in err


@pytest.mark.parametrize("text, words", [
    ("embeding_size: [16, 32]\n", ["unknown key 'embeding_size'", "did you mean 'embedding_size'"]),
    ("embedding_size: 32\n", ["key 'embedding_size' = 32", "expected a list"]),
    ("embedding_size: []\n", ["key 'embedding_size'", "empty list"]),
    ("optim_args.learning_rate: [0.001, -1]\n", ["optim_args", "learning_rate = -1"]),
])
def test_bad_sweep_file_fails_before_any_trial(tmp_path, capsys, text, words):
    grid = write(tmp_path / "bad.yaml", text)
    status, out, err = call_main(sweep.main, ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "--grid", grid,
                                              "--sweep_dir", tmp_path / "sweep", *SMALL], capsys)
    assert status == 2, err
    assert str(grid) in err and all(w in err for w in words), err
    assert not (tmp_path / "sweep").exists() and "trial-000" not in out


def test_a_key_both_searched_and_overridden_is_refused(tmp_path, capsys):
    grid = write(tmp_path / "grid.yaml", GRID)
    status, _, err = call_main(sweep.main, ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "--grid", grid,
                                            "--embedding_size=64", "--dry_run"], capsys)
    assert status == 2 and "embedding_size" in err


@pytest.mark.parametrize("name", ["demo.yaml", "idnet_sasrec.yaml", "pixelnet_sasrec.yaml", "adaptation.yaml"])
def test_shipped_sweep_files_build_valid_configs(name, capsys):
    configs = {"pixelnet_sasrec.yaml": ["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
               "adaptation.yaml": ["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
               "idnet_sasrec.yaml": ["IDNet/sasrec.yaml", "overall/ID.yaml"],
               "demo.yaml": ["IDNet/sasrec.yaml", "overall/ID.yaml", "demo/demo.yaml"]}[name]
    grid = ROOT / "sweeps" / name
    trials = ["--trials", "20"] if name not in ("demo.yaml", "adaptation.yaml") else []
    status, out, err = call_main(sweep.main, ["--config_file", *configs, "--grid", grid, *trials, "--dry_run"], capsys)
    assert status == 0, err
    assert len(out.strip().splitlines()) == {"demo.yaml": 4, "adaptation.yaml": 16}.get(name, 20)


def test_trials_find_this_package_from_any_folder():
    """A trial runs ``python -m REC train`` with the folder that holds REC/ first on PYTHONPATH (not REC/ itself,
    whose modules would shadow installed packages of the same names, such as ``datasets``)."""
    from REC.app.sweep import PACKAGE_ROOT
    import REC
    assert PACKAGE_ROOT == Path(REC.__file__).resolve().parent.parent
