"""Compare finished runs: ``python -m REC report runs/ [more dirs] [--csv F] [--markdown F] [--plot F]
[--bar COLUMN --bar_plot F] [--metric ndcg@10]``.

A run is finished when its directory holds ``result.json``; the given directories are searched recursively,
following symlinks (each real directory once), so a sweep directory's trials and linked runs are found too. A
result.json of another shape skips its run with one warning line. A directory with ``config.yaml`` and no
``result.json`` is a run that has not finished (still training, killed, or failed): it is named on the last line
and kept out of the table, whose numbers would otherwise mix finished and partial runs.

Config columns: only the keys whose values differ between the collected runs, since those are what the table
compares; nested mappings are flattened to dotted keys (``optim_args.learning_rate``). ``IGNORED_KEYS`` are
never shown: where a run was written, cache locations and logging verbosity differ between otherwise identical
runs (a sweep puts every trial in its own output_dir) and say nothing about the result. ``model`` and
``dataset`` have columns of their own.

Sorting: by dataset, then data file, then the validation value of ``--metric`` (default: the runs'
``valid_metric``), best first; validation, not test, because choosing on the test split would report an optimistic
number, so a run without a validation value (eval_step 0, NaN) is never best, and a note says so. The best run of
each group (same dataset, same data file by the CSV's content hash in data.json, same model family) is marked:
``*`` on stdout, bold in markdown, ``best`` in CSV. Two CSVs under one dataset name are not one benchmark.

Output paths are checked before any run is read: an error after the table is printed would leave some outputs
written and others not.

matplotlib is needed only for ``--plot``/``--bar_plot`` and is imported when one is asked for, so the package
imports and trains without it.
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

from ..utils.errors import UserError
from ..utils.run_layout import CONFIG_FILE, DATA_FILE, RESULT_FILE, SWEEP_FILE, TRANSFER_REPORT_FILE

IGNORED_KEYS = {"output_dir", "cache_dir", "encoder_cache_dir", "show_progress", "state", "dist_timeout_s",
                "model", "dataset"}
DATA_HASH_KEY = "csv_blake2b"  # its content hash of the CSV the run read
DATA_HASH_SHOWN = 12         # hex digits of that hash in the table; enough to tell two files apart
NUMBER_FIELDS = ("best_epoch", "epochs_run", "seconds_per_epoch", "eval_seconds", "cover_encode_seconds",
                 "peak_rss_mib", "peak_gpu_mib", "world_size", "trainable_parameters")
RESULT_EXPECTED = "expected a JSON object as main.py writes it (best_valid and test: metric -> number or null)"
BEST = "best"
OUTPUTS = (("--csv", "csv", "CSV"), ("--markdown", "markdown", "markdown"), ("--plot", "plot", "curves"),
           ("--bar_plot", "bar_plot", "bar chart"))  # (option, argparse name, what the last lines call it)
MATPLOTLIB_HINT = "matplotlib is needed for --plot/--bar_plot: pip install matplotlib"


class ReportError(UserError, RuntimeError):
    """A problem with the command's inputs (no such directory, unknown column, unwritable output); exit status 2."""


class BadRunFile(ValueError):
    """A run's file that cannot be read as the report expects it; the run is skipped with a warning."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- collecting
def find_runs(dirs) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished) run directories under ``dirs``, each once, in path order.

    Symlinks are followed: ``runs/`` often links to runs kept on another disk, and leaving those out would make the
    table look complete when it is not. Each real directory is walked once, so a link back up the tree ends there
    and a run reached by two paths is listed once. Every directory reachable without a link is walked before any
    link is followed, so a run that is also linked to keeps its own name."""
    tops = list(map(Path, dirs))
    for top in tops:
        if not top.is_dir():
            raise ReportError(f"{str(top)!r} is not a directory")
    finished, unfinished, walked = [], [], set()
    direct, linked = list(reversed(tops)), []  # stacks: depth first, in name order
    while direct or linked:
        here = direct.pop() if direct else linked.pop()
        key = here.resolve()
        if key in walked:
            continue
        walked.add(key)
        try:
            entries = sorted(os.scandir(here), key=lambda e: e.name)
        except OSError as exc:
            warn(f"cannot list {here} ({exc.strerror or exc}); runs under it are not in the table")
            continue
        folders = [e for e in entries if _is_folder(e)]
        files = {e.name for e in entries} - {e.name for e in folders}
        if RESULT_FILE in files:
            finished.append(here)
            continue  # a finished run holds no other runs, only tensorboard/ and the like
        if CONFIG_FILE in files and SWEEP_FILE not in files:
            unfinished.append(here)
        direct.extend(Path(e.path) for e in reversed(folders) if not e.is_symlink())
        linked.extend(Path(e.path) for e in reversed(folders) if e.is_symlink())
    return sorted(finished), sorted(unfinished)


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a symlink; a dangling one is no folder
    except OSError:
        return False


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
    path = run_dir / CONFIG_FILE
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
        from ..model import get_model_class
        return get_model_class(str(name)).family
    except Exception:  # unknown name, or model modules that fail to import here
        return None


def json_type(value) -> str:
    """The JSON name of a parsed value's type, the word a person reading the file would use."""
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise BadRunFile(f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise BadRunFile("not UTF-8 text") from None
    except ValueError as exc:  # json.JSONDecodeError: truncated, or being written by hand
        raise BadRunFile(f"not valid JSON ({exc})") from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_problem(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"'{where}' is a {json_type(value)}"
    for k, v in value.items():
        if v is not None and not _is_number(v):
            return f"'{where}.{k}' is a {json_type(v)}"
    return None


def result_problem(result) -> str | None:
    """What keeps ``result`` from being read as main.py's result.json, None when nothing does. Checked whole before
    the run joins the table: one value of the wrong type (a list as dataset, a string as a metric) would otherwise
    stop the report halfway with a traceback, for every run."""
    if not isinstance(result, dict):
        return f"it holds a JSON {json_type(result)}"
    for key in ("model", "dataset"):
        if not isinstance(result.get(key), (str, type(None))):
            return f"'{key}' is a {json_type(result[key])}"
    for key in NUMBER_FIELDS:
        if result.get(key) is not None and not _is_number(result[key]):
            return f"'{key}' is a {json_type(result[key])}"
    for key in ("best_valid", "test"):
        if problem := _metrics_problem(result.get(key), key):
            return problem
    for key in ("best_valid_buckets", "test_buckets", "protocol"):
        if not isinstance(result.get(key), (dict, type(None))):
            return f"'{key}' is a {json_type(result[key])}"
    for key in ("best_valid_buckets", "test_buckets"):
        for bucket, values in (result.get(key) or {}).items():
            if not isinstance(values, dict):
                return f"'{key}.{bucket}' is a {json_type(values)}"
            if problem := _metrics_problem(values, f"{key}.{bucket}"):
                return problem
    history = result.get("history")
    if not isinstance(history, (list, type(None))):
        return f"'history' is a {json_type(history)}"
    for i, entry in enumerate(history or []):
        if not isinstance(entry, dict) or not _is_number(entry.get("epoch")):
            return f"'history[{i}]' is not an object with a number 'epoch'"
        if entry.get("train_loss") is not None and not _is_number(entry["train_loss"]):
            return f"'history[{i}].train_loss' is a {json_type(entry['train_loss'])}"
        if problem := _metrics_problem(entry.get("valid"), f"history[{i}].valid"):
            return problem
    return None


def read_data_hash(run_dir: Path) -> str | None:
    """The content hash of the CSV the run was trained on (``save_run_vocabulary``'s data.json). None for a run
    made before runs recorded it, and for one whose data.json cannot be read (with a warning): unknown data."""
    path = run_dir / DATA_FILE
    if not path.is_file():
        return None
    try:
        info = read_json(path)
    except BadRunFile as exc:
        warn(f"{path}: {exc}; the run's data counts as unknown")
        return None
    digest = info.get(DATA_HASH_KEY) if isinstance(info, dict) else None
    if not isinstance(digest, str) or not digest:
        warn(f"{path}: expected a JSON object with a string {DATA_HASH_KEY!r}; the run's data counts as unknown")
        return None
    return digest


class Run:
    """One finished run: its result.json, flattened config, the hash of its data and the directory's optional
    transfer report."""

    def __init__(self, run_dir: Path, name: str):
        self.dir, self.name = run_dir, name
        self.result = read_json(run_dir / RESULT_FILE)
        if problem := result_problem(self.result):
            raise BadRunFile(problem)
        self.config = flatten(read_config(run_dir))
        self.data = read_data_hash(run_dir)
        self.transfer = self._read_transfer(run_dir / TRANSFER_REPORT_FILE)
        self.family = model_family(self.result.get("model", self.config.get("model")))

    @staticmethod
    def _read_transfer(path: Path) -> dict | None:
        """Only the loaded count is shown: a report of another shape loses that cell, not the whole run."""
        if not path.is_file():
            return None
        try:
            transfer = read_json(path)
            if not isinstance(transfer, dict) or not isinstance(transfer.get("counts") or {}, dict):
                raise BadRunFile(f"it holds a JSON {json_type(transfer)} without a 'counts' object")
        except BadRunFile as exc:
            warn(f"{path}: {exc}; expected a JSON object with 'counts'; 'transferred tensors' left empty")
            return None
        return transfer

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
        except BadRunFile as exc:
            warn(f"skipping {d / RESULT_FILE}: {exc}; {RESULT_EXPECTED}")
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


def valid_value(run: Run, metric: str) -> tuple[float | None, str | None]:
    """(the validation value that ranks the run, None) or (None, why it has none). Never the test value: choosing
    on the test split reports an optimistic number, and a run that never validated (eval_step 0) or whose
    validation is NaN has nothing to be ranked on; it is listed, never marked best."""
    v = (run.result.get("best_valid") or {}).get(metric)
    if v is None:
        return None, f"no valid {metric}"
    if not math.isfinite(v):
        return None, f"valid {metric} is {v}"
    return v, None


def data_label(run: Run) -> str | None:
    return run.data[:DATA_HASH_SHOWN] if run.data else None


def datasets_on_several_data(runs: list[Run]) -> dict:
    """dataset name -> Counter of data labels (None: unknown), for each name whose runs read more than one file."""
    per_dataset = {}
    for r in runs:
        per_dataset.setdefault(r.result.get("dataset", r.config.get("dataset")), Counter())[data_label(r)] += 1
    return {ds: labels for ds, labels in per_dataset.items() if len(labels) > 1}


def protocol_sizes(run: Run) -> dict:
    """The protocol's sizes (items held out, users kept); its settings are config keys and show as those."""
    protocol = dict(run.result.get("protocol") or {})
    protocol.pop("settings", None)
    return flatten(protocol)


def build_table(runs: list[Run], metric: str | None = None) -> tuple[list[str], list[dict], str]:
    """(columns, rows, metric): one row per run, sorted, with ``best`` True for the best of each group.

    A group is one dataset, one data file (the CSV's content hash; unknown for runs without data.json counts as
    one more file) and one model family: runs on two versions of a CSV that share a dataset name are not
    comparable, so each version gets its own ranking and its own best."""
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
    valid = {id(r): valid_value(r, metric) for r in runs}

    columns = ["run", "model", "family"]
    if any_(lambda r: r.config.get("encoder")):
        columns.append("encoder")
    columns.append("dataset")
    if datasets_on_several_data(runs):
        columns.append("data")
    columns += [*keys, "best_epoch", "epochs_run"]
    columns += [f"valid {m}" for m in metrics] + [f"test {m}" for m in metrics]
    if any(note for _, note in valid.values()):
        columns.append("note")
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
               "data": data_label(r), "best_epoch": res.get("best_epoch"), "epochs_run": res.get("epochs_run"),
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
        row["_run"] = r
        row["_score"], row["note"] = valid[id(r)]
        rows.append(row)

    # best first within a dataset and its data file (unknown data last); runs without a validation value last
    rows.sort(key=lambda row: (str(row["dataset"]), row["data"] is None, row["data"] or "", row["_score"] is None,
                               -(row["_score"] or 0.0), row["run"]))
    seen = set()
    for row in rows:
        group = (row["dataset"], row["data"], row["family"] or row["model"])
        row[BEST] = row["_score"] is not None and group not in seen
        if row[BEST]:
            seen.add(group)
    return columns, rows, metric


def table_notes(rows: list[dict], metric: str) -> list[str]:
    """One line for each thing the table's marks cannot show: runs that were not ranked, and datasets whose runs
    read different data (ranked apart)."""
    notes = []
    several = datasets_on_several_data([row["_run"] for row in rows])
    for dataset, labels in several.items():
        files = ", ".join(f"{label or f'unknown (no {DATA_FILE})'}: {n} run(s)" for label, n in
                          sorted(labels.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))
        notes.append(f"note: dataset {dataset!r} holds runs on {len(labels)} different data files ({files}); "
                     f"each is ranked and its best marked on its own (column 'data'), never against the others")
    unranked = [row["run"] for row in rows if row["_score"] is None]
    if unranked:
        notes.append(f"note: {len(unranked)} run(s) have no usable validation {metric} and are never marked best "
                     f"(eval_step 0 never validates; NaN is no value): {', '.join(unranked)}")
    return notes


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


def markdown_table(columns: list[str], rows: list[dict], notes: list[str] = ()) -> str:
    def cell(row, c):
        text = fmt(row.get(c), c).replace("|", "\\|")
        return f"**{text}**" if row[BEST] else text

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    legend = "Bold: the best run of its dataset, data file and model family, chosen on validation."
    return "\n".join([*lines, "", legend, *(f"\n{note}" for note in notes)]) + "\n"


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
class MatplotlibMissing(UserError, RuntimeError):
    """The plot options need matplotlib, which training never imports."""


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


def bar_points(rows: list[dict], columns: list[str], column: str) -> tuple[str, list[tuple[dict, float]]]:
    """(the column as the table spells it, [(row, value)] for the runs with a number there); checked before the
    table is printed, so that a misspelt column is the only thing the command says."""
    match = [c for c in columns if c.lower() == column.lower()]
    if not match:
        raise ReportError(f"--bar {column!r}: no such column; columns: {', '.join(columns)}")
    column = match[0]
    points = [(row, row.get(column)) for row in rows]
    points = [(row, v) for row, v in points if _is_number(v)]
    if not points:
        raise ReportError(f"--bar {column!r}: no run has a number in that column")
    return column, points


def plot_bar(column: str, points: list[tuple[dict, float]], path: Path) -> None:
    """One bar per run that has a number in ``column``; the best of each group in a darker colour."""
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
    p = argparse.ArgumentParser(prog="python -m REC report", description=__doc__.split("\n\n")[0],
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


def check_outputs(args: argparse.Namespace) -> None:
    """Every output file can be written, checked before any run is read: a misspelt folder would otherwise end
    the command with a traceback after the table was printed, with some outputs written and others not. Folders
    are not created: a path that does not exist is more often a typo than a wish."""
    seen = {}
    for option, attr, _ in OUTPUTS:
        path = getattr(args, attr)
        if path is None:
            continue
        where, folder = f"{option} {str(path)!r}", path.parent
        if path.is_dir():
            raise ReportError(f"{where} is a folder; give a file name")
        if not folder.is_dir():
            state = "is not a folder" if folder.exists() else "does not exist"
            raise ReportError(f"{where}: folder {str(folder)!r} {state}; create it or give another path")
        if not os.access(folder, os.W_OK):
            raise ReportError(f"{where}: folder {str(folder)!r} is not writable")
        if path.resolve() in seen:
            raise ReportError(f"{where}: {seen[path.resolve()]} writes the same file; give each its own")
        seen[path.resolve()] = option


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_outputs(args)
        if args.plot or args.bar_plot:
            _pyplot()  # before the work, as the paths are
        runs, unfinished = load_runs(args.dirs)
        if not runs:
            print(f"no finished run (a directory with {RESULT_FILE}) under {', '.join(args.dirs)}")
        else:
            columns, rows, metric = build_table(runs, args.metric)
            bar = bar_points(rows, columns, args.bar) if args.bar else None
            notes = table_notes(rows, metric)
            print(text_table(columns, rows))
            print(f"\n{len(rows)} finished run(s), sorted by dataset, data file and valid {metric}; * best of its "
                  f"dataset, data file and model family")
            for note in notes:
                print(note)
            writers = {"csv": lambda path: write_csv(columns, rows, path),
                       "markdown": lambda path: path.write_text(markdown_table(columns, rows, notes)),
                       "plot": lambda path: plot_curves(rows, differing_keys(runs), metric, path),
                       "bar_plot": lambda path: plot_bar(*bar, path)}
            for option, attr, _ in OUTPUTS:
                if path := getattr(args, attr):
                    try:
                        writers[attr](path)
                    except OSError as exc:  # checked above, so: a full disk, or the folder removed meanwhile
                        raise ReportError(f"{option} {str(path)!r}: cannot write ({exc.strerror or exc})") from None
            for _, attr, what in OUTPUTS:
                if getattr(args, attr):
                    print(f"{what}: {getattr(args, attr)}")
        if unfinished:
            print(f"unfinished (no {RESULT_FILE}, not in the table): {', '.join(map(str, unfinished))}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if runs else 1
