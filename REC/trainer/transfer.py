"""Cross-domain transfer: start a model from the matching tensors of a run on another dataset (``init_from``).

``init_parts`` chooses what carries over:
- ``encoder``: the image encoder and its projection head, i.e. every tensor whose name contains
  ``encoder_modules`` (``[visual_encoder]``; the same rule that puts it in the optimizer's modal group);
- ``backbone``: every other tensor that is not an ID table (transformer, position embeddings, norms, towers).

ID tables never transfer, whatever ``init_parts`` says: row k of an item or user table means the item or user
whose id is k in *its* dataset, and ids mean different things across datasets (even where the row counts
happen to agree). A tensor is an ID table when, in the model being initialised,
1. it belongs to an ``nn.Embedding`` whose row count is the dataset's ``item_num`` (item table, row 0 padding),
   ``item_num + 1`` (BERT4Rec's item table with its mask row) or ``user_num`` (user table); or
2. it is registered on the model itself (not on a layer inside it) and its first dimension is ``item_num`` or
   ``user_num`` (per-item statistics such as Pop's counts).
Position embeddings (``MAX_ITEM_LIST_LENGTH`` rows) are not ID tables and transfer. Should a non-ID embedding
have exactly ``item_num`` or ``user_num`` rows (a toy dataset), it is classed as an ID table: a table that
should have moved and did not shows in the report, a wrong table loaded silently would not.

A tensor loads when it has the same name and shape in both models and its part is requested; everything else
is reported: loaded, newly initialised (in the model, not loaded) and skipped (in the checkpoint, not loaded),
each with its reason. The report goes to the log and to ``transfer_report.json`` in the run directory.
"""
from __future__ import annotations

import logging
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import distributed as dist
from ..config import ConfigError
from ..utils.run_layout import BEST_CHECKPOINT, TRANSFER_REPORT_FILE
from .checkpoint import write_json_atomic
from .optim import in_encoder

log = logging.getLogger(__name__)
PARTS = ("encoder", "backbone")
SHOW = 12                    # entries of each list in the log and in error messages (the JSON has them all)

# why a tensor did not load
ID_TABLE = "id_table"
NOT_REQUESTED = "not_in_init_parts"
SHAPE_MISMATCH = "shape_mismatch"
ABSENT_IN_TARGET = "absent_in_target"          # in the checkpoint, not in the model
ABSENT_IN_CHECKPOINT = "absent_in_checkpoint"  # in the model, not in the checkpoint


class TransferError(ConfigError):
    """``init_from`` cannot initialise this model (found before training: ``main.py`` exits 2)."""


@dataclass
class TransferReport:
    init_from: str
    checkpoint: str
    init_parts: list
    loaded: list = field(default_factory=list)       # {name, part, shape}
    initialised: list = field(default_factory=list)  # {name, part, shape, why[, detail]}: kept their fresh init
    skipped: list = field(default_factory=list)      # {name, part, why, source_shape[, target_shape, detail]}

    @property
    def loaded_names(self) -> list[str]:
        return [e["name"] for e in self.loaded]

    def to_dict(self) -> dict:
        counts = {"loaded": len(self.loaded), "initialised": len(self.initialised), "skipped": len(self.skipped),
                  "loaded_values": sum(_numel(e["shape"]) for e in self.loaded),
                  "loaded_by_part": dict(Counter(e["part"] for e in self.loaded)),
                  "skipped_by_reason": dict(Counter(e["why"] for e in self.skipped)),
                  "initialised_by_reason": dict(Counter(e["why"] for e in self.initialised))}
        return {**asdict(self), "counts": counts}

    def summary(self) -> str:
        c = self.to_dict()["counts"]
        parts = ", ".join(f"{p}: {n}" for p, n in c["loaded_by_part"].items()) or "none"
        lines = [f"init_from {self.init_from} ({self.checkpoint}), init_parts {self.init_parts}: loaded "
                 f"{c['loaded']} tensors ({c['loaded_values']:,} values; {parts}), newly initialised "
                 f"{c['initialised']}, skipped {c['skipped']} (in the checkpoint, not loaded)"]
        for title, entries in (("skipped", self.skipped), ("newly initialised", self.initialised)):
            if entries:
                lines.append(f"  {title}:")
                lines += [f"    {_describe(e)}" for e in entries[:SHOW]]
                if len(entries) > SHOW:
                    lines.append(f"    ... ({len(entries) - SHOW} more in {TRANSFER_REPORT_FILE})")
        return "\n".join(lines)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _describe(e: dict) -> str:
    why = e["why"]
    if "source_shape" in e:  # a checkpoint tensor
        shapes = f"checkpoint {tuple(e['source_shape'])}" + (
            f", model {tuple(e['target_shape'])}" if "target_shape" in e else "")
    else:
        shapes = f"model {tuple(e['shape'])}"
    if why == ID_TABLE:
        why = f"ID table ({e['detail']}; {shapes})"
    elif why == SHAPE_MISMATCH:
        why = f"shape mismatch: {shapes}"
    elif why == NOT_REQUESTED:
        why = f"not in init_parts (part {e['part']})"
    else:
        why = f"{why.replace('_', ' ')} ({shapes})"
    return f"{e['name']}: {why}"


# ---------------------------------------------------------------------------------------------- inputs
def _where(config) -> str:
    return f"{config.source_of('init_from')}: key 'init_from' ({str(config['init_from'])!r})"


def requested_parts(config) -> list[str]:
    parts = config["init_parts"]
    parts = [parts] if isinstance(parts, str) else list(parts)  # --init_parts=encoder gives a bare string
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise TransferError(f"{config.source_of('init_parts')}: key 'init_parts': {parts} must be a non-empty "
                            f"subset of {list(PARTS)}" + (f" (unknown: {unknown})" if unknown else ""))
    return parts


def checkpoint_path(init_from: str | Path) -> Path:
    """A run directory means its best.pth; anything else must be a checkpoint file. Raises ValueError."""
    path = Path(init_from)
    if path.is_dir():
        if not (path / BEST_CHECKPOINT).is_file():
            raise ValueError(f"the directory has no {BEST_CHECKPOINT}; a run directory holds it once its first "
                             f"evaluation has run (or give a checkpoint file)")
        return path / BEST_CHECKPOINT
    if not path.exists():
        raise ValueError("no such file or directory")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict in a checkpoint file: a dict with a ``model`` state dict (best.pth, last.pth) or a
    bare state dict. On the CPU, with the safe loader, memory-mapped when the file allows it (the meta-device
    preflight then reads shapes without reading the weights). Raises ValueError."""
    mmap = zipfile.is_zipfile(path)  # torch.save's format since 1.6; older files cannot be mapped
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # the loader's errors are many types (pickle, zip, runtime); all mean the same here
        text = " ".join(str(exc).split())
        raise ValueError(f"not a PyTorch checkpoint (torch.load: {type(exc).__name__}: {text[:300]})") from None
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    tensors = {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} \
        if isinstance(state, dict) else {}
    if not tensors:
        found = f"a dict with keys {sorted(map(str, obj))[:SHOW]}" if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"not a model checkpoint: expected a dict whose 'model' entry is a state dict (as a run's "
                         f"best.pth and last.pth) or a state dict of tensors; found {found}")
    return tensors


# ---------------------------------------------------------------------------------------------- the rule
def id_tables(model: nn.Module) -> dict[str, str]:
    """``{state-dict name: what it is}`` of every ID table of ``model`` (the rule in the module docstring)."""
    rows = {model.item_num: "item table", model.item_num + 1: "item table with mask row",
            model.user_num: "user table"}
    if model.item_num == model.user_num:
        rows[model.item_num] = "item or user table"
    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings in rows:
            what = f"{rows[module.num_embeddings]} of {module.num_embeddings} rows here"
            for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                found[f"{prefix}.{name}" if prefix else name] = what
    per_id = {model.item_num: "per-item tensor", model.user_num: "per-user tensor"}
    for name, t in [*model.named_parameters(recurse=False), *model.named_buffers(recurse=False)]:
        if t.dim() and t.shape[0] in per_id:
            found[name] = f"{per_id[t.shape[0]]} of {t.shape[0]} rows here"
    return found


def part_of(name: str, encoder_modules) -> str:
    return "encoder" if in_encoder(name, encoder_modules) else "backbone"


def plan(model: nn.Module, source: dict[str, torch.Tensor], parts, encoder_modules, init_from: str = "",
         checkpoint: str = "") -> TransferReport:
    """What loading ``source`` into ``model`` would do; shapes only, so ``model`` may live on the meta device."""
    target = model.state_dict(keep_vars=True)
    ids = id_tables(model)
    report = TransferReport(str(init_from), str(checkpoint), list(parts))
    for name, tensor in source.items():
        entry = {"name": name, "part": part_of(name, encoder_modules), "source_shape": list(tensor.shape)}
        have = target.get(name)
        if have is not None:
            entry["target_shape"] = list(have.shape)
        if name in ids:
            report.skipped.append({**entry, "why": ID_TABLE, "detail": ids[name]})
        elif entry["part"] not in parts:
            report.skipped.append({**entry, "why": NOT_REQUESTED})
        elif have is None:
            report.skipped.append({**entry, "why": ABSENT_IN_TARGET})
        elif have.shape != tensor.shape:
            report.skipped.append({**entry, "why": SHAPE_MISMATCH})
        else:
            report.loaded.append({"name": name, "part": entry["part"], "shape": list(tensor.shape)})
    not_loaded = {e["name"]: e for e in report.skipped}
    loaded = set(report.loaded_names)
    for name, tensor in target.items():
        if name in loaded:
            continue
        entry = {"name": name, "part": part_of(name, encoder_modules), "shape": list(tensor.shape)}
        if name in ids:
            report.initialised.append({**entry, "why": ID_TABLE, "detail": ids[name]})
        elif name in not_loaded:
            report.initialised.append({**entry, "why": not_loaded[name]["why"]})
        elif entry["part"] not in parts:
            report.initialised.append({**entry, "why": NOT_REQUESTED})
        else:
            report.initialised.append({**entry, "why": ABSENT_IN_CHECKPOINT})
    return report


# ---------------------------------------------------------------------------------------------- entry points
def check_init_from(model: nn.Module, config) -> tuple[TransferReport, dict[str, torch.Tensor]]:
    """Read ``init_from`` and plan its loading into ``model`` (meta device is fine). Raises TransferError when
    the file is missing or not a checkpoint, or when no tensor of the requested parts fits."""
    parts = requested_parts(config)
    try:
        path = checkpoint_path(config["init_from"])
        source = read_state_dict(path)
    except ValueError as exc:
        raise TransferError(f"{_where(config)}: {exc}") from None
    report = plan(model, source, parts, config["encoder_modules"], config["init_from"], path)
    if not report.loaded:
        why = Counter(e["why"].replace("_", " ") for e in report.skipped)
        mismatches = [_describe(e) for e in report.skipped if e["why"] == SHAPE_MISMATCH][:3]
        raise TransferError(
            f"{_where(config)}: no tensor of {path} fits this {config['model']} model for init_parts {parts}; of "
            f"its {len(source)} tensors: " + ", ".join(f"{n} {w}" for w, n in why.items())
            + (f"; e.g. {'; '.join(mismatches)}" if mismatches else ""))
    for part in parts:
        wanted = [e for e in report.initialised if e["part"] == part and e["why"] != ID_TABLE]
        if wanted and not any(e["part"] == part for e in report.loaded):
            log.warning("init_from %s: nothing of the requested part %r fits (%d tensors of the model keep their "
                        "fresh init, e.g. %s)", path, part, len(wanted), _describe(wanted[0]))
    return report, source


def initialise_from(model: nn.Module, config, run_dir: Path | None = None) -> TransferReport:
    """Load the matching tensors of ``init_from`` into ``model`` (every rank reads the same file, so all start
    equal before DDP wraps the model); log the report and save it in ``run_dir`` (rank 0)."""
    report, source = check_init_from(model, config)
    target = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in report.loaded_names:
            target[name].copy_(source[name])
    log.info("%s", report.summary())
    if run_dir is not None and dist.is_main():
        write_json_atomic(report.to_dict(), Path(run_dir) / TRANSFER_REPORT_FILE)
    return report
