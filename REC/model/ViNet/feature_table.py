"""The model side of frozen item features: the ViNet models' table, read from one ``.npy`` per dataset and image
encoder (written by ``python -m REC features``), row i = internal item id i (items numbered by first appearance in
the CSV, as in the original), row 0 = padding.

Not a model (no ``@register_model``): the ViNet models share the loader and the holder below.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...utils.files import sidecar
from ...data.item_array import ItemArrayError, ItemArrayFile, ItemIdentity, mark_verified, verified_before
from ...utils.integrity import DamagedFileError, npy_layout, verify_file
from ..base import key_source
from ...utils.errors import UserError

log = logging.getLogger(__name__)

FEATURE_KEY = "v_feat_path"


class FeatureFileError(UserError, ValueError):
    """The feature file is missing or does not fit the dataset or the model; the message names the file and the
    config key, so ``main.py`` reports it before any process starts (exit status 2)."""


def _describe_ndim(ndim: tuple[int, ...]) -> str:
    shapes = {2: "[item_num, D]", 3: "[item_num, R, D] (R regions)", 4: "[item_num, H, W, D] (a feature map)"}
    return " or ".join(shapes.get(n, f"{n}-d") for n in ndim)


def feature_sidecar(path: Path) -> dict | None:
    """The description of a feature file of the earlier format (``F.json``, or its earlier name ``F.npy.json``:
    what the rows were made for and their CRC-32s); None for a file made by other tools."""
    for meta_path in (sidecar(path, "json"), Path(f"{path}.json")):
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                raise FeatureFileError(f"{meta_path}, the description of {path}, cannot be read ({exc}); extract "
                                       f"the features again (python -m REC features)") from None
            return meta if isinstance(meta, dict) else None
    return None


def check_feature_file(path: Path, where: str, item_ids: str | None) -> np.ndarray | None:
    """The file's layout, what it was made for and its bytes (once per process and file version): a file made for
    another dataset with the same number of items, or one damaged after it was written, is an error naming it.
    Returns the checked rows (memory-mapped copy-on-write) of a file of the shared per-item format, else None."""
    redo = "extract the features again (python -m REC features)"
    try:
        found = ItemArrayFile.on_disk(path)
        if found is not None:
            found.check_items(ItemIdentity("", item_ids, found.item_num), redo)  # the row count: below
            return found.array(redo)
    except ItemArrayError as exc:
        raise FeatureFileError(f"{where}: {exc}") from None
    meta = feature_sidecar(path)
    try:
        npy_layout(path, fortran_ok=meta is None)  # other tools may write Fortran order; this project never does
    except DamagedFileError as exc:
        raise FeatureFileError(f"{where}: {exc.why}; {redo}") from None
    if meta is None:
        log.warning("%s has no description beside it (%s): what dataset its rows were made for and whether its "
                    "bytes are intact cannot be checked", where, sidecar(path, "json").name)
        return None
    made_for = meta.get("items_sha256")
    if item_ids is not None and made_for is not None and made_for != item_ids:
        raise FeatureFileError(f"{where} was extracted for dataset {meta.get('dataset')!r} with another item list "
                               f"(items_sha256 {made_for[:12]}..., this run's {item_ids[:12]}...): its rows are other "
                               f"items, or the same ones in another order; {redo} for this dataset")
    if "checksum" in meta and not verified_before(path):
        try:
            verify_file(path, meta["checksum"], redo)
        except DamagedFileError as exc:
            raise FeatureFileError(f"{where}: {exc.why}") from None
        mark_verified(path)
    return None


def load_item_features(path: str | Path | None, item_num: int, *, ndim: tuple[int, ...] = (2,),
                       expected_width: int | None = None, key: str = FEATURE_KEY,
                       shapes_only: bool = False, item_ids: str | None = None) -> torch.Tensor:
    """The float32 table ``[item_num, ..., D]`` of ``path``, checked against the dataset and the model.

    ``ndim``: the numbers of dimensions the model accepts; ``expected_width``: the last dimension D the model was
    configured for (None: any). ``shapes_only`` (the launcher's preflight): only the header is read and a meta
    tensor of the right shape comes back, so a bad file fails before any process starts at no cost.
    ``item_ids`` (``DatasetInfo.item_ids``): the run's item order, checked against the one the file was made for;
    the file's CRC-32s are checked once per process (``check_feature_file``).
    A float32 file is memory-mapped copy-on-write, not read: pages load as rows are used, and several processes
    on one machine share them through the page cache.
    """
    if path is None:
        raise FeatureFileError(f"config key {key!r} is null; set it to the item feature file (.npy) extracted for "
                               f"this dataset, e.g. --{key}=dataset/visual_features/RN50.npy")
    path = Path(path)
    where = f"feature file {str(path)!r} (config key {key!r})"
    if not path.is_file():
        raise FeatureFileError(f"{where} does not exist (resolved: {path.resolve()}); relative paths are relative to "
                               f"the working directory, and the features must be extracted for this dataset first")
    array = check_feature_file(path, where, item_ids)
    try:
        if array is None:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise FeatureFileError(f"{where} is not a numeric .npy array ({exc})") from None
    if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.floating)
                                                 or np.issubdtype(array.dtype, np.integer)):
        raise FeatureFileError(f"{where} holds {getattr(array, 'dtype', type(array).__name__)}, not numbers")
    if array.ndim not in ndim:
        raise FeatureFileError(f"{where} has shape {list(array.shape)} ({array.ndim} dimensions); this model expects "
                               f"{_describe_ndim(ndim)}")
    if array.shape[0] != item_num:
        raise FeatureFileError(
            f"{where} has {array.shape[0]} rows, but the dataset needs item_num = {item_num} rows ({item_num - 1} "
            f"items + 1 padding row 0, row i = internal item id i); the features must be extracted for this dataset")
    if expected_width is not None and array.shape[-1] != expected_width:
        raise FeatureFileError(f"{where} has feature width {array.shape[-1]} (shape {list(array.shape)}), but the "
                               f"model is configured for width {expected_width} (v_feat_dim); extract the features "
                               f"with the matching encoder or change v_feat_dim")
    if shapes_only:
        return torch.empty(array.shape, dtype=torch.float32, device="meta")
    if array.dtype == np.float32 and array.flags.c_contiguous:
        return torch.from_numpy(array)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class FeatureTable(nn.Module):
    """A frozen feature table that moves with the model (``.to(device)``) but is neither a parameter nor a buffer:
    checkpoints stay small (the file is the source of truth), and DDP does not broadcast the table from rank 0 at
    every forward, which it does for all buffers, non-persistent ones included (each rank reads the same file).

    ``on_host``: the table stays in host memory (memory-mapped) whatever the model's device, and each lookup
    copies only its rows to the device of the ids: for feature maps larger than the GPU's memory.
    """

    def __init__(self, table: torch.Tensor, on_host: bool = False):
        super().__init__()
        self.table, self.on_host = table, on_host

    def _apply(self, fn, recurse=True):
        if not self.on_host:
            self.table = fn(self.table)
        return super()._apply(fn, recurse)

    @property
    def width(self) -> int:
        return self.table.shape[-1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """[...] item ids -> [..., *feature shape], on the device of ``ids``."""
        if self.table.device == ids.device:
            return self.table[ids]
        return self.table[ids.to(self.table.device)].to(ids.device, non_blocking=True)

    def extra_repr(self) -> str:
        return f"shape={list(self.table.shape)}, device={self.table.device}"


def feature_table_from_config(config, info, *, ndim: tuple[int, ...] = (2,), on_host: bool = False) -> FeatureTable:
    """The model's ``v_feat_path`` table for the dataset ``info`` (``DatasetInfo``), checked against ``v_feat_dim``
    when that is set; an error starts with where ``v_feat_path`` was set."""
    try:
        table = load_item_features(config[FEATURE_KEY], info.item_num, ndim=ndim, expected_width=config["v_feat_dim"],
                                   shapes_only=info.shapes_only, item_ids=getattr(info, "item_ids", None))
    except FeatureFileError as exc:
        raise FeatureFileError(f"{key_source(config, FEATURE_KEY)}: {exc}") from None
    return FeatureTable(table, on_host=on_host)
