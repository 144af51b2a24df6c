"""python -m REC report against the ways a table can mislead (issue 25): a best run chosen on its test split, runs
behind symlinks left out, runs on different data ranked together, tracebacks for a missing output folder or one
malformed result.json.

Run directories are written by hand (config.yaml, result.json and, where the data matters, data.json written by
``save_run_vocabulary`` itself): the report only reads those files, so no training is needed.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from REC import report
from REC.data import save_run_vocabulary
from REC.data.interactions import load_interactions
from REC.data.synthetic import sequential_log, write_csv
from tests.conftest import call_main

METRIC = "ndcg@10"


def make_run(run_dir: Path, valid: float | None, test: float, *, eval_step: int = 1, dataset: str = "Demo",
             data_hash: str | None = "c1f655929a407c8f1d0e03a34b81b6a4", **config) -> Path:
    """A finished run as main.py leaves it; ``valid`` None is a run that never validated (eval_step 0), whose
    result.json holds ``best_valid: null``; ``data_hash`` None leaves out data.json (a run of an older version)."""
    run_dir.mkdir(parents=True)
    cfg = {"model": "SASRec", "dataset": dataset, "valid_metric": METRIC, "eval_step": eval_step,
           "output_dir": str(run_dir.parent), **config}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    best_valid = None if valid is None else {METRIC: valid, "recall@10": 0.5}
    result = {"model": "SASRec", "dataset": dataset, "best_epoch": 0 if valid is not None else 1,
              "best_valid": best_valid, "test": {METRIC: test, "recall@10": 0.5}, "epochs_run": 2,
              "seconds_per_epoch": 1.0, "eval_seconds": 0.1, "peak_rss_mib": 100.0, "world_size": 1,
              "trainable_parameters": 1000,
              "history": [{"epoch": 0, "train_loss": 2.0, **({"valid": best_valid} if best_valid else {})}]}
    (run_dir / "result.json").write_text(json.dumps(result))  # json writes NaN as NaN, as the trainer's would
    if data_hash is not None:
        (run_dir / "data.json").write_text(json.dumps({"csv": "/data/Demo.csv", "csv_blake2b": data_hash}))
    return run_dir


def rows_of(*dirs, metric=None):
    runs, _ = report.load_runs(list(dirs))
    columns, rows, _ = report.build_table(runs, metric)
    return columns, {row["run"]: row for row in rows}


def best_runs(*dirs) -> set[str]:
    return {name for name, row in rows_of(*dirs)[1].items() if row["best"]}


# ---------------------------------------------------------------------------------------------- 1: validation only
def test_a_run_without_a_validation_value_is_never_best(tmp_path, capsys):
    make_run(tmp_path / "validated", valid=0.10, test=0.10)
    make_run(tmp_path / "never-validated", valid=None, test=0.90, eval_step=0)  # the best test value
    make_run(tmp_path / "nan-valid", valid=math.nan, test=0.80)
    columns, rows = rows_of(tmp_path)
    assert best_runs(tmp_path) == {"validated"}
    assert list(rows)[0] == "validated"  # runs without a validation value sort last
    assert "note" in columns
    assert rows["validated"]["note"] is None
    assert rows["never-validated"]["note"] == f"no valid {METRIC}"
    assert rows["nan-valid"]["note"] == f"valid {METRIC} is nan"

    status, out, _ = call_main(report.main, [tmp_path, "--csv", tmp_path / "t.csv"], capsys)
    assert status == 0
    note = [line for line in out.splitlines() if "never marked best" in line]
    assert len(note) == 1 and "never-validated" in note[0] and "nan-valid" in note[0]
    with open(tmp_path / "t.csv", newline="") as f:
        back = {row["run"]: row for row in csv.DictReader(f)}
    assert {name: row["best"] for name, row in back.items()} == \
        {"validated": "1", "never-validated": "0", "nan-valid": "0"}


def test_no_run_is_best_when_none_validated(tmp_path):
    make_run(tmp_path / "a", valid=None, test=0.3, eval_step=0)
    make_run(tmp_path / "b", valid=None, test=0.4, eval_step=0)
    assert best_runs(tmp_path) == set()


# ---------------------------------------------------------------------------------------------- 2: symlinks
def test_runs_behind_symlinks_are_found_once(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    make_run(elsewhere / "r1", valid=0.1, test=0.1, embedding_size=32)
    make_run(elsewhere / "sweep" / "trial-0", valid=0.2, test=0.2, embedding_size=48)
    runs = tmp_path / "runs"
    make_run(runs / "r0", valid=0.3, test=0.3, embedding_size=64)
    (runs / "linked-run").symlink_to(elsewhere / "r1", target_is_directory=True)
    (runs / "linked-sweep").symlink_to(elsewhere / "sweep", target_is_directory=True)
    (runs / "loop").symlink_to(runs, target_is_directory=True)  # a cycle: runs/loop/loop/... must end
    assert sorted(rows_of(runs)[1]) == ["linked-run", "r0", "trial-0"]
    # the same three runs, each once, when also reached through their real paths or a symlinked root
    (tmp_path / "root-link").symlink_to(runs, target_is_directory=True)
    found, _ = report.load_runs([runs, elsewhere, tmp_path / "root-link"])
    assert sorted(r.dir.resolve() for r in found) == sorted(
        p.resolve() for p in (runs / "r0", elsewhere / "r1", elsewhere / "sweep" / "trial-0"))
    assert sorted(rows_of(tmp_path / "root-link")[1]) == ["linked-run", "r0", "trial-0"]


def test_a_real_directory_is_named_before_a_link_to_it(tmp_path):
    make_run(tmp_path / "b-real", valid=0.1, test=0.1)
    (tmp_path / "a-link").symlink_to(tmp_path / "b-real", target_is_directory=True)
    assert list(rows_of(tmp_path)[1]) == ["b-real"]


# ---------------------------------------------------------------------------------------------- 3: data identity
def _data_json(tmp_path: Path, seed: int) -> dict:
    """data.json as a run on a ``Demo.csv`` drawn with ``seed`` writes it (the run's own function)."""
    folder = tmp_path / f"data{seed}"
    write_csv(sequential_log(n_users=30, n_items=20, seed=seed), folder / "Demo.csv")
    config = {"data_path": str(folder), "dataset": "Demo", "cache_dir": str(tmp_path / "cache")}
    save_run_vocabulary(load_interactions(config["data_path"], "Demo", config["cache_dir"]), config, folder)
    return json.loads((folder / "data.json").read_text())


def test_runs_on_different_data_are_ranked_apart(tmp_path, capsys):
    old, new = (_data_json(tmp_path, seed)["csv_blake2b"] for seed in (1, 2))
    assert old != new
    runs = tmp_path / "runs"
    make_run(runs / "old-a", valid=0.10, test=0.1, data_hash=old, embedding_size=32)
    make_run(runs / "old-b", valid=0.20, test=0.2, data_hash=old, embedding_size=64)
    make_run(runs / "new-a", valid=0.50, test=0.5, data_hash=new, embedding_size=32)
    make_run(runs / "unknown", valid=0.90, test=0.9, data_hash=None, embedding_size=64)
    columns, rows = rows_of(runs)
    assert best_runs(runs) == {"old-b", "new-a", "unknown"}  # one best per data file, none across them
    assert "data" in columns
    assert rows["old-a"]["data"] == rows["old-b"]["data"] == old[:12] and rows["new-a"]["data"] == new[:12]
    assert rows["unknown"]["data"] is None
    order = list(rows)  # each data file's runs together, so no row of one sits between rows of another
    assert abs(order.index("old-a") - order.index("old-b")) == 1

    status, out, _ = call_main(report.main, [runs], capsys)
    assert status == 0
    notes = [line for line in out.splitlines() if "different data" in line]
    assert len(notes) == 1 and "'Demo'" in notes[0] and old[:12] in notes[0] and new[:12] in notes[0]


def test_same_data_keeps_one_ranking_and_no_data_column(tmp_path, capsys):
    digest = _data_json(tmp_path, 1)["csv_blake2b"]
    make_run(tmp_path / "runs" / "a", valid=0.1, test=0.1, data_hash=digest, embedding_size=32)
    make_run(tmp_path / "runs" / "b", valid=0.2, test=0.2, data_hash=digest, embedding_size=64)
    make_run(tmp_path / "runs" / "other-dataset", valid=0.3, test=0.3, dataset="Other", data_hash="f" * 32)
    columns, _ = rows_of(tmp_path / "runs")
    assert best_runs(tmp_path / "runs") == {"b", "other-dataset"} and "data" not in columns
    status, out, _ = call_main(report.main, [tmp_path / "runs"], capsys)
    assert status == 0 and "different data" not in out


# ---------------------------------------------------------------------------------------------- 4: output paths
@pytest.mark.parametrize("option", ["--csv", "--markdown", "--plot", "--bar_plot"])
def test_an_output_in_a_missing_folder_stops_before_the_table(tmp_path, capsys, option):
    make_run(tmp_path / "runs" / "a", valid=0.1, test=0.1)
    target = tmp_path / "no" / "such" / "out.file"
    extra = ["--bar", f"test {METRIC}"] if option == "--bar_plot" else []
    status, out, err = call_main(report.main, [tmp_path / "runs", option, target, *extra], capsys)
    assert status == 2 and out == ""  # nothing printed: the check comes before the work
    assert err.count("\n") == 1 and err.startswith(f"error: {option} ") and str(target) in err
    assert "does not exist" in err and not target.parent.exists()


def test_an_output_that_is_a_folder_or_named_twice_is_refused(tmp_path, capsys):
    make_run(tmp_path / "runs" / "a", valid=0.1, test=0.1)
    status, out, err = call_main(report.main, [tmp_path / "runs", "--csv", tmp_path], capsys)
    assert status == 2 and out == "" and err.startswith("error: --csv ") and "is a folder" in err
    png = tmp_path / "same.png"
    status, out, err = call_main(report.main, [tmp_path / "runs", "--plot", png, "--bar", f"test {METRIC}",
                                               "--bar_plot", png], capsys)
    assert status == 2 and out == "" and "--plot" in err and "--bar_plot" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- 5: bad result.json
BAD_RESULTS = {
    "a JSON list": ("[1, 2]", "array"),
    "test a string": (json.dumps({"best_valid": {METRIC: 0.1}, "test": "0.3"}), "'test' is a string"),
    "invalid JSON": ('{"best_valid": ', "not valid JSON"),
    "a metric a string": (json.dumps({"best_valid": {METRIC: "high"}, "test": {}}), f"'best_valid.{METRIC}'"),
    "history not a list": (json.dumps({"best_valid": {}, "test": {}, "history": {"epoch": 0}}), "'history'"),
    "dataset a list": (json.dumps({"best_valid": {}, "test": {}, "dataset": ["Demo"]}), "'dataset'"),
}


@pytest.mark.parametrize("case", BAD_RESULTS)
def test_a_malformed_result_json_is_skipped_with_one_warning(tmp_path, capsys, case):
    text, what = BAD_RESULTS[case]
    make_run(tmp_path / "good", valid=0.1, test=0.1)
    bad = make_run(tmp_path / "bad", valid=0.2, test=0.2) / "result.json"
    bad.write_text(text)
    status, out, err = call_main(report.main, [tmp_path, "--plot", tmp_path / "c.png"], capsys)
    assert status == 0 and "1 finished run(s)" in out and "good" in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: skipping {bad}: ") and what in lines[0]
    assert "expected a JSON object" in lines[0] and "Traceback" not in err


def test_a_malformed_transfer_report_keeps_the_run(tmp_path, capsys):
    run = make_run(tmp_path / "a", valid=0.1, test=0.1)
    (run / "transfer_report.json").write_text("[]")
    status, out, err = call_main(report.main, [tmp_path], capsys)
    assert status == 0 and "1 finished run(s)" in out
    assert err.startswith(f"warning: {run / 'transfer_report.json'}: ") and err.count("\n") == 1
