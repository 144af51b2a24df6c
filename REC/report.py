"""Compare finished runs: ``python -m REC.report runs/ [more dirs] [--csv F] [--markdown F] [--plot F]
[--bar COLUMN --bar_plot F] [--metric ndcg@10]``.

A run is finished when its directory holds ``result.json``; the given directories are searched recursively, so a
sweep directory's trials are found too. A directory with ``config.yaml`` and no ``result.json`` is a run that has
not finished (still training, killed, or failed): it is named on the last line and kept out of the table, whose
numbers would otherwise mix finished and partial runs.

Config columns: only the keys whose values differ between the collected runs, since those are what the table
compares; nested mappings are flattened to dotted keys (``optim_args.learning_rate``). ``IGNORED_KEYS`` are
never shown: where a run was written, cache locations and logging verbosity differ between otherwise identical
runs (a sweep puts every trial in its own output_dir) and say nothing about the result. ``model`` and
``dataset`` have columns of their own.

Sorting: by dataset, then by the validation value of ``--metric`` (default: the runs' ``valid_metric``), best
first; validation, not test, because choosing on the test split would report an optimistic number. The best run
of each group (same dataset and model family) is marked: ``*`` on stdout, bold in markdown, ``best`` in CSV.

matplotlib is needed only for ``--plot``/``--bar_plot`` and is imported there, so the package imports and
trains without it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path

import yaml

RESULT_NAME = "result.json"
CONFIG_NAME = "config.yaml"
TRANSFER_NAME = "transfer_report.json"
SWEEP_NAME = "sweep.json"  # REC/sweep.py's record; its directory holds trial runs, and is not one itself
IGNORED_KEYS = {"output_dir", "cache_dir", "encoder_cache_dir", "show_progress", "state", "dist_timeout_s",
                "model", "dataset"}
BEST = "best"
MATPLOTLIB_HINT = "matplotlib is needed for --plot/--bar_plot: pip install matplotlib"


class ReportError(RuntimeError):
    """A problem with the command's inputs (no such directory, unknown column); exit status 2."""


# ---------------------------------------------------------------------------------------------- collecting
def find_runs(dirs) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished) run directories under ``dirs``, each once, in path order."""
    finished, unfinished, seen = [], [], set()
    for top in map(Path, dirs):
        if not top.is_dir():
            raise ReportError(f"{str(top)!r} is not a directory")
        for root, subdirs, files in os.walk(top):
            here = Path(root)
            key = here.resolve()
            subdirs.sort()
            is_run = RESULT_NAME in files or (CONFIG_NAME in files and SWEEP_NAME not in files)
            if is_run and key not in seen:
                seen.add(key)
                (finished if RESULT_NAME in files else unfinished).append(here)
            if RESULT_NAME in files:
                subdirs[:] = []  # a finished run holds no other runs, only tensorboard/ and the like
    return sorted(finished), sorted(unfinished)


def flatten(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_config(run_dir: Path) -> dict:
    """The run's resolved config as plain YAML (the ``# source`` comments drop out): read without validating, so
    runs made by older versions with since-renamed keys still show."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def model_family(name) -> str | None:
    """None for a model this version does not know (a run made by another version or a plugin)."""
    try:
        from .model import get_model_class
        return get_model_class(str(name)).family
    except Exception:  # unknown name, or model modules that fail to import here
        return None


class Run:
    """One finished run: its result.json, flattened config and the directory's optional transfer report."""

    def __init__(self, run_dir: Path, name: str):
        self.dir, self.name = run_dir, name
        self.result = json.loads((run_dir / RESULT_NAME).read_text())
        self.config = flatten(read_config(run_dir))
        transfer = run_dir / TRANSFER_NAME
        self.transfer = json.loads(transfer.read_text()) if transfer.is_file() else None
        self.family = model_family(self.result.get("model", self.config.get("model")))

    @property
    def history(self) -> list[dict]:
        return self.result.get("history") or []


def run_names(dirs: list[Path]) -> list[str]:
    """Directory names; where two runs share one (trials of two sweeps), the parent's name is prefixed."""
    counts = Counter(d.name for d in dirs)
    return [d.name if counts[d.name] == 1 else f"{d.parent.name}/{d.name}" for d in dirs]


def load_runs(dirs) -> tuple[list[Run], list[Path]]:
    finished, unfinished = find_runs(dirs)
    runs = []
    for d, name in zip(finished, run_names(finished)):
        try:
            runs.append(Run(d, name))
        except (OSError, ValueError) as exc:  # a result.json being written by hand, or truncated
            print(f"skipping {d}: cannot read {RESULT_NAME} ({exc})", file=sys.stderr)
    return runs, unfinished


# ---------------------------------------------------------------------------------------------- the table
def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose value is not the same in every run (a key missing from a run counts as a value)."""
    if len(runs) < 2:
        return []
    keys = {k for r in runs for k in r.config} - IGNORED_KEYS
    missing = object()
    out = []
    for k in keys:
        values = [r.config.get(k, missing) for r in runs]
        if any(v is missing for v in values) and not all(v is missing for v in values):
            out.append(k)
        elif not all(_same(values[0], v) for v in values[1:]):
            out.append(k)
    return sorted(out)


def default_metric(runs: list[Run]) -> str:
    votes = Counter(str(r.config["valid_metric"]).lower() for r in runs if r.config.get("valid_metric"))
    return votes.most_common(1)[0][0] if votes else "ndcg@10"


def _metric_names(runs: list[Run]) -> list[str]:
    names = {}
    for r in runs:
        for part in ("best_valid", "test"):
            names.update(dict.fromkeys(r.result.get(part) or {}))
    return list(names)


def sort_value(run: Run, metric: str):
    """The validation value that orders the runs; the test value when the run never validated (eval_step 0)."""
    for part in ("best_valid", "test"):
        v = (run.result.get(part) or {}).get(metric)
        if isinstance(v, (int, float)) and not math.isnan(v):
            return v
    return None


def protocol_sizes(run: Run) -> dict:
    """The protocol's sizes (items held out, users kept); its settings are config keys and show as those."""
    protocol = dict(run.result.get("protocol") or {})
    protocol.pop("settings", None)
    return flatten(protocol)


def build_table(runs: list[Run], metric: str | None = None) -> tuple[list[str], list[dict], str]:
    """(columns, rows, metric): one row per run, sorted, with ``best`` True for the best of each group."""
    metric = (metric or default_metric(runs)).lower()
    keys = differing_keys(runs)
    metrics = _metric_names(runs)
    if metric not in metrics and runs:
        raise ReportError(f"--metric {metric!r}: no run has it; the runs have {', '.join(metrics) or 'none'}")
    any_ = lambda f: any(f(r) is not None for r in runs)  # noqa: E731
    buckets = {}
    for r in runs:
        for part in ("best_valid_buckets", "test_buckets"):
            buckets.update(dict.fromkeys(r.result.get(part) or {}))
    protocol_keys = sorted({k for r in runs for k in protocol_sizes(r)})

    columns = ["run", "model", "family"]
    if any_(lambda r: r.config.get("encoder")):
        columns.append("encoder")
    columns += ["dataset", *keys, "best_epoch", "epochs_run"]
    columns += [f"valid {m}" for m in metrics] + [f"test {m}" for m in metrics]
    columns += ["s/epoch", "eval s"]
    if any_(lambda r: r.result.get("cover_encode_seconds")):
        columns.append("cover encode s")
    columns.append("peak RSS MiB")
    if any_(lambda r: r.result.get("peak_gpu_mib")):
        columns.append("peak GPU MiB")
    if len({r.result.get("world_size") for r in runs}) > 1:
        columns.append("world_size")
    columns.append("params")
    for part, label in (("best_valid_buckets", "valid"), ("test_buckets", "test")):
        if any_(lambda r: r.result.get(part)):
            columns += [f"{label} {metric} [{b}]" for b in buckets]
    columns += [f"protocol.{k}" for k in protocol_keys]
    if any_(lambda r: r.transfer):
        columns.append("transferred tensors")

    rows = []
    for r in runs:
        res = r.result
        row = {"run": r.name, "model": res.get("model", r.config.get("model")), "family": r.family,
               "encoder": r.config.get("encoder"), "dataset": res.get("dataset", r.config.get("dataset")),
               "best_epoch": res.get("best_epoch"), "epochs_run": res.get("epochs_run"),
               "s/epoch": res.get("seconds_per_epoch"), "eval s": res.get("eval_seconds"),
               "cover encode s": res.get("cover_encode_seconds"), "peak RSS MiB": res.get("peak_rss_mib"),
               "peak GPU MiB": res.get("peak_gpu_mib"), "world_size": res.get("world_size"),
               "params": res.get("trainable_parameters")}
        row.update({k: r.config.get(k) for k in keys})
        for m in metrics:
            row[f"valid {m}"] = (res.get("best_valid") or {}).get(m)
            row[f"test {m}"] = (res.get("test") or {}).get(m)
        for part, label in (("best_valid_buckets", "valid"), ("test_buckets", "test")):
            for b, values in (res.get(part) or {}).items():
                row[f"{label} {metric} [{b}]"] = values.get(metric)
        row.update({f"protocol.{k}": v for k, v in protocol_sizes(r).items()})
        if r.transfer:
            row["transferred tensors"] = (r.transfer.get("counts") or {}).get("loaded")
        row["_run"], row["_score"] = r, sort_value(r, metric)
        rows.append(row)

    # best first within a dataset; runs without the metric last
    rows.sort(key=lambda row: (str(row["dataset"]), row["_score"] is None, -(row["_score"] or 0.0), row["run"]))
    seen = set()
    for row in rows:
        group = (row["dataset"], row["family"] or row["model"])
        row[BEST] = row["_score"] is not None and group not in seen
        if row[BEST]:
            seen.add(group)
    return columns, rows, metric


# ---------------------------------------------------------------------------------------------- writing
def fmt(value, column: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if "@" in column:
            return f"{value:.4f}"
        return f"{value:.1f}" if abs(value) >= 10 or column.endswith((" s", "/epoch")) else f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def text_table(columns: list[str], rows: list[dict]) -> str:
    cells = [[("*" if row[BEST] else " ")] + [fmt(row.get(c), c) for c in columns] for row in rows]
    header = [" "] + columns
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    numeric = [any(isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool) for row in rows)
               for c in columns]
    align = [False] + numeric

    def line(values):
        return "  ".join(v.rjust(w) if a else v.ljust(w) for v, w, a in zip(values, widths, align)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, cells)])


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    def cell(row, c):
        text = fmt(row.get(c), c).replace("|", "\\|")
        return f"**{text}**" if row[BEST] else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n\nBold: the best run of its dataset and model family.\n"


def write_csv(columns: list[str], rows: list[dict], path: Path) -> None:
    """Full-precision values (the printed tables round them); lists and mappings as JSON; ``best`` 1 or 0."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, BEST])
        for row in rows:
            values = [row.get(c) for c in columns]
            w.writerow(["" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v for v in values]
                       + [int(row[BEST])])


# ---------------------------------------------------------------------------------------------- plots
class MatplotlibMissing(RuntimeError):
    pass


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing(MATPLOTLIB_HINT) from None
    matplotlib.use("Agg")  # files only: no display is needed, and none is opened on a headless node
    import matplotlib.pyplot as plt
    return plt


def short_label(name: str, limit: int = 32) -> str:
    return name if len(name) <= limit else f"{name[:limit // 2 - 1]}…{name[-(limit - limit // 2):]}"


def legend_labels(rows: list[dict], keys: list[str]) -> list[str]:
    """Short run names plus the differing settings, which tell lines apart better than timestamps do."""
    names = [row["run"] for row in rows]
    prefix = os.path.commonprefix(names) if len(names) > 1 else ""
    prefix = prefix[:prefix.rfind("-") + 1] if "-" in prefix else ""
    labels = []
    for row in rows:
        settings = ", ".join(f"{k.rsplit('.', 1)[-1]}={fmt(row.get(k), k)}" for k in keys)
        label = short_label(row["run"][len(prefix):] or row["run"])
        labels.append(f"{label} ({short_label(settings, 40)})" if settings else label)
    return labels


def plot_curves(rows: list[dict], keys: list[str], metric: str, path: Path) -> None:
    """Two panels over epochs: mean training loss, and the validation metric (runs that validated)."""
    plt = _pyplot()
    fig, (ax_loss, ax_valid) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row, label in zip(rows, legend_labels(rows, keys)):
        history = row["_run"].history
        loss = [(h["epoch"], h["train_loss"]) for h in history if h.get("train_loss") is not None]
        valid = [(h["epoch"], h["valid"][metric]) for h in history if metric in (h.get("valid") or {})]
        (line,) = ax_loss.plot(*zip(*loss), marker="o", ms=3, label=label) if loss else ax_loss.plot([], [])
        if valid:
            ax_valid.plot(*zip(*valid), marker="o", ms=3, color=line.get_color(), label=label)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="mean batch loss")
    ax_valid.set(title=f"validation {metric}", xlabel="epoch", ylabel=metric)
    for ax in (ax_loss, ax_valid):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs, not 0.2 steps
    handles, labels = ax_loss.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_valid.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(len(labels), 1)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_bar(rows: list[dict], columns: list[str], column: str, path: Path) -> None:
    """One bar per run that has a number in ``column``; the best of each group in a darker colour."""
    match = [c for c in columns if c.lower() == column.lower()]
    if not match:
        raise ReportError(f"--bar {column!r}: no such column; columns: {', '.join(columns)}")
    column = match[0]
    points = [(row, row.get(column)) for row in rows]
    points = [(row, v) for row, v in points if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not points:
        raise ReportError(f"--bar {column!r}: no run has a number in that column")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(points) + 2), 4.5))
    labels = [short_label(row["run"], 28) for row, _ in points]
    colours = ["tab:blue" if row[BEST] else "tab:gray" for row, _ in points]
    bars = ax.bar(range(len(points)), [v for _, v in points], color=colours)
    ax.bar_label(bars, labels=[fmt(v, column) for _, v in points], fontsize=7)
    ax.set_xticks(range(len(points)), labels, rotation=40, ha="right", fontsize=8)
    ax.set(ylabel=column, title=column)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m REC.report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", help="run directories, or folders holding them (searched recursively)")
    p.add_argument("--metric", help="metric to sort by and plot, e.g. ndcg@10 (default: the runs' valid_metric)")
    p.add_argument("--csv", type=Path, help="write the table as CSV (full precision, with a 'best' column)")
    p.add_argument("--markdown", type=Path, help="write the table as markdown (best runs in bold)")
    p.add_argument("--plot", type=Path, help="PNG of training loss and validation metric per epoch")
    p.add_argument("--bar", metavar="COLUMN", help="a table column to draw as a bar chart (needs --bar_plot)")
    p.add_argument("--bar_plot", type=Path, help="PNG of the --bar column, one bar per run")
    args = p.parse_args(argv)
    if bool(args.bar) != bool(args.bar_plot):
        p.error("--bar and --bar_plot go together")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs, unfinished = load_runs(args.dirs)
        if not runs:
            print(f"no finished run (a directory with {RESULT_NAME}) under {', '.join(args.dirs)}")
        else:
            columns, rows, metric = build_table(runs, args.metric)
            print(text_table(columns, rows))
            print(f"\n{len(rows)} finished run(s), sorted by dataset then valid {metric}; * best of its dataset "
                  f"and model family")
            if args.csv:
                write_csv(columns, rows, args.csv)
            if args.markdown:
                args.markdown.write_text(markdown_table(columns, rows))
            if args.plot:
                plot_curves(rows, differing_keys(runs), metric, args.plot)
            if args.bar:
                plot_bar(rows, columns, args.bar, args.bar_plot)
            for what, path in (("CSV", args.csv), ("markdown", args.markdown), ("curves", args.plot),
                               ("bar chart", args.bar_plot)):
                if path:
                    print(f"{what}: {path}")
        if unfinished:
            print(f"unfinished (no {RESULT_NAME}, not in the table): {', '.join(map(str, unfinished))}")
    except MatplotlibMissing as exc:
        print(exc, file=sys.stderr)
        return 2
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if runs else 1


if __name__ == "__main__":
    sys.exit(main())
