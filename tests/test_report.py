"""python -m REC report: the table, its sorting and best marks, CSV, markdown and the two plots, on real runs.

Two real demo runs (different learning rates, trained at the same time, on 100 training users so that both
take seconds) and a copy of each with another embedding_size in config.yaml and other numbers in result.json:
four finished runs whose settings differ in exactly two keys, as a 2x2 sweep's would.
"""
from __future__ import annotations

import csv
import json
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from REC import report
from tests.conftest import call_main, run_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEARNING_RATES = (0.001, 0.01)


def _demo(out: Path, lr: float) -> Path:
    return run_main(["--device", "cpu", "--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", "demo/demo.yaml",
                     "--epochs=2", "--train_user_cap=100", f"--optim_args.learning_rate={lr}",
                     f"--output_dir={out / f'lr{lr}'}"]).run_dir


def _copy_with_embedding(src: Path, dst: Path, scale: float) -> None:
    """A run as if trained with embedding_size 32: the config line changed, every metric scaled by ``scale``."""
    shutil.copytree(src, dst)
    cfg = dst / "config.yaml"
    lines = cfg.read_text().splitlines()
    assert sum(line.startswith("embedding_size: 64 ") for line in lines) == 1
    cfg.write_text("\n".join("embedding_size: 32  # command line" if line.startswith("embedding_size: 64 ")
                             else line for line in lines) + "\n")
    result = json.loads((dst / "result.json").read_text())
    for part in ("best_valid", "test"):
        result[part] = {k: v * scale for k, v in result[part].items()}
    for h in result["history"]:
        h["valid"] = {k: v * scale for k, v in h["valid"].items()}
        h["train_loss"] += 0.5
    result["trainable_parameters"] //= 2
    (dst / "result.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("report")
    with ThreadPoolExecutor(2) as pool:  # two child processes at once: the runs are mostly process start-up
        real = list(pool.map(lambda lr: _demo(top / "real", lr), LEARNING_RATES))
    sweep = top / "sweep"  # nested one level deeper, as a sweep's trials are
    for i, (run_dir, scale) in enumerate(zip(real, (0.5, 3.0))):
        _copy_with_embedding(run_dir, sweep / f"trial-{i}", scale)
    unfinished = sweep / "trial-9"
    unfinished.mkdir()
    shutil.copy(real[0] / "config.yaml", unfinished / "config.yaml")
    return top


def _rows(top: Path, metric=None):
    found, unfinished = report.load_runs([top])
    columns, rows, metric = report.build_table(found, metric)
    return columns, rows, unfinished


def test_rows_match_result_json(runs):
    columns, rows, unfinished = _rows(runs)
    assert len(rows) == 4
    assert [p.name for p in unfinished] == ["trial-9"]
    for row in rows:
        result = json.loads((row["_run"].dir / "result.json").read_text())
        assert row["model"] == "SASRec" and row["family"] == "IDNet" and row["dataset"] == "Demo"
        assert row["best_epoch"] == result["best_epoch"] and row["params"] == result["trainable_parameters"]
        assert row["s/epoch"] == result["seconds_per_epoch"] and row["peak RSS MiB"] == result["peak_rss_mib"]
        for m in ("recall@10", "ndcg@10", "recall@5", "ndcg@5"):
            assert row[f"valid {m}"] == result["best_valid"][m] and row[f"test {m}"] == result["test"][m]
        for b, values in result["test_buckets"].items():
            assert row[f"test ndcg@10 [{b}]"] == values["ndcg@10"]
    config_columns = columns[columns.index("dataset") + 1:columns.index("best_epoch")]
    assert config_columns == ["embedding_size", "optim_args.learning_rate"]
    assert sorted((r["embedding_size"], r["optim_args.learning_rate"]) for r in rows) == \
        sorted((e, lr) for e in (32, 64) for lr in LEARNING_RATES)


def test_sorting_and_best_mark(runs):
    _, rows, _ = _rows(runs)
    scores = [r["valid ndcg@10"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["best"] for r in rows] == [True, False, False, False]  # one dataset, one family
    _, rows, _ = _rows(runs, metric="recall@5")
    assert [r["valid recall@5"] for r in rows] == sorted((r["valid recall@5"] for r in rows), reverse=True)


def test_command_writes_csv_markdown_and_plots(runs, tmp_path, capsys):
    out = {name: tmp_path / name for name in ("t.csv", "t.md", "curves.png", "bar.png")}
    status, stdout, _ = call_main(report.main, [runs, "--csv", out["t.csv"], "--markdown", out["t.md"], "--plot",
                                                out["curves.png"], "--bar", "test ndcg@10", "--bar_plot",
                                                out["bar.png"]], capsys)
    assert status == 0
    assert "4 finished run(s)" in stdout and stdout.rstrip().splitlines()[-1].startswith("unfinished")
    assert "trial-9" in stdout.rstrip().splitlines()[-1]
    columns, rows, _ = _rows(runs)
    with open(out["t.csv"], newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == [*columns, "best"]
    for row, back in zip(rows, read):
        assert back["run"] == row["run"] and back["best"] == str(int(row["best"]))
        for c in columns:
            value = row.get(c)
            if isinstance(value, float):
                assert float(back[c]) == value
            elif value is None:
                assert back[c] == ""
            else:
                assert back[c] == str(value)
    md = out["t.md"].read_text().splitlines()
    assert md[0].startswith("| run |") and md[2].startswith(f"| **{rows[0]['run']}**") and "**" not in md[3]
    for png in (out["curves.png"], out["bar.png"]):
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000


def test_unknown_bar_column_and_empty_dir(runs, tmp_path, capsys):
    status, _, err = call_main(report.main, [runs, "--bar", "nope", "--bar_plot", tmp_path / "b.png"], capsys)
    assert status == 2 and "no such column" in err
    status, stdout, _ = call_main(report.main, [tmp_path], capsys)
    assert status == 1 and "no finished run" in stdout


def test_missing_matplotlib_is_a_clear_error(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    status, _, err = call_main(report.main, [runs, "--plot", tmp_path / "c.png"], capsys)
    assert status == 2 and report.MATPLOTLIB_HINT in err
    assert not (tmp_path / "c.png").exists()
