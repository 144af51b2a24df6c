"""Frozen image features of every item, for the ViNet models: the library behind ``python -m REC.features``.

The original shipped its feature files (``RN50.npy``, ``RN50_layer4.npy``) as downloads and no code that made
them. Here they come from the same item encoders PixelNet trains (``REC.model.encoders``), frozen:

- a feature is the backbone's readout WITHOUT the projection head (``Backbone.pooled``; ``RN50.npy`` is the
  2048-d pooled ResNet output), or with ``spatial`` the last feature map ``[H, W, D]`` (CNNs, Swin) or patch
  tokens ``[R, D]`` (ViT, BEiT) for ACF (``Backbone.feature_map``); covers are normalised and resized exactly
  as PixelNet does (``CoverItems.pixels``);
- the file ``F.npy`` is ``[item_num, ...]`` float32, row i = internal item id i, row 0 (padding) zeros, with
  the item token of every row in ``F.items.txt`` and the settings in ``F.json`` (``REC.utils.files.sidecar``;
  files written before that rule have ``F.npy.items.txt`` and ``F.npy.json``);
- extraction writes into ``F.partial`` (a memory-mapped ``.npy``, named so that nothing takes it for a
  finished feature file) and records the rows done in ``F.partial.json`` after each flushed chunk; a rerun
  with the same settings continues there, and the finished file is renamed into place, so ``F.npy`` is never
  half written.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import Config, ConfigError
from ..configure import build_config
from ..data import load_interactions
from ..data.cover_batches import check_covers, cover_lmdb_path
from ..data.covers import CoverStore
from ..utils.files import sidecar, write_text_atomic
from ..utils.integrity import checksum_record, npy_layout
from ..utils.precision import autocast
from ..distributed import one_device
from ..utils.errors import UserError

log = logging.getLogger(__name__)

FORMAT, VERSION = "pixelrec-features", 1
FEATURES_DIR = "visual_features"


class FeatureExtractionError(UserError, ValueError):
    """The extraction cannot run as asked (a partial file of other settings, an output in the way, no spatial
    map); the message says what to change."""


# ----------------------------------------------------------------------------------------------- config
def feature_config(config_files, overrides=()) -> Config:
    """The config of ``config_files`` + ``overrides`` (``main.py``'s syntax). Extraction reads only data and encoder
    keys, so no model file needs to be named (an encoder file alone, e.g. overall/RN50.yaml, is enough)."""
    return build_config(config_files, overrides, require_model=False)


def default_output(config, spatial: bool = False) -> Path:
    """``<data_path>/visual_features/<encoder>.npy`` (``timm/x`` -> ``timm_x``); ``_spatial`` before the suffix
    for feature maps."""
    name = str(config["encoder"]).replace("/", "_") + ("_spatial" if spatial else "")
    return Path(config["data_path"]) / FEATURES_DIR / f"{name}.npy"


# ----------------------------------------------------------------------------------------------- features
class FeatureExtractor(torch.nn.Module):
    """The extraction side's frozen encoder: uint8 covers ``[n, 3, h, w]`` -> float features ``[n, width]``, or
    ``[n, H, W, D]`` / ``[n, R, D]`` with ``spatial``, from the configured encoder in eval mode with every
    parameter frozen. (The ViNet models read what it wrote through ``REC.model.ViNet.feature_table``.)

    Random weights (``encoder_pretrained: false``) are drawn after seeding with ``config['seed']``, so a resumed
    extraction continues with the same encoder.
    """

    def __init__(self, config, spatial: bool = False):
        super().__init__()
        from ..model.encoders import build_item_encoder
        from ..model.pixel import CoverItems

        if not config["encoder"]:
            from ..model.encoders import list_encoders
            raise ConfigError(f"no encoder: set `encoder` in a config file (e.g. overall/RN50.yaml) or pass "
                              f"--encoder=<name>; known encoders: {list_encoders()}, or timm/<name>")
        torch.manual_seed(config["seed"])
        encoder = build_item_encoder(config, 1)  # the head (to width 1, the cheapest) is never called
        # CoverItems holds the normalisation and resizing PixelNet applies; its encoder is ours, unused there
        self.items = CoverItems(config, 1, encoder=encoder)
        self.backbone, self.spatial = encoder.backbone, spatial
        self.encoder_name, self.readout = encoder.name, encoder.readout
        self.channels_last = encoder.channels_last
        if spatial and not self.backbone.has_feature_map:
            raise FeatureExtractionError(f"--spatial is not supported for encoder {self.encoder_name!r}: its "
                                         f"backbone ({type(self.backbone).__name__}) gives no feature map")
        self.requires_grad_(False)
        self.eval()

    @property
    def image_size(self) -> int:
        return self.items.resize_to

    def forward(self, covers: torch.Tensor) -> torch.Tensor:
        x = self.items.pixels(covers)
        if self.channels_last:  # decided for the device in prepare()
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone.feature_map(x) if self.spatial else self.backbone.pooled(x)

    def prepare(self, device: torch.device) -> FeatureExtractor:
        from ..model.encoders.backbone import channels_last_pays
        self.to(device)
        self.channels_last = self.channels_last and channels_last_pays(device)  # the item encoders' rule
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        return self


class _CoverRows(Dataset):
    """uint8 cover batches ``[n, 3, H, W]`` of the items ``start..stop-1`` in order; unlike ItemCoverBatches it
    starts anywhere, so a resumed extraction can change the batch size."""

    def __init__(self, store: CoverStore, start: int, stop: int, batch_size: int):
        self.store, self.start, self.stop, self.batch_size = store, start, stop, batch_size

    def __len__(self) -> int:
        return (max(0, self.stop - self.start) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> torch.Tensor:
        a = self.start + b * self.batch_size
        return torch.from_numpy(self.store.get(np.arange(a, min(a + self.batch_size, self.stop))))


# ----------------------------------------------------------------------------------------------- files
def sidecars(output: Path) -> dict[str, Path]:
    """The files that go with ``output``: item tokens, settings, and the partial file with its progress."""
    return {"items": sidecar(output, "items.txt"), "meta": sidecar(output, "json"),
            "partial": sidecar(output, "partial"), "progress": sidecar(output, "partial.json")}


def _read_progress(path: Path) -> dict | None:
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return progress if isinstance(progress, dict) and progress.get("format") == FORMAT else None


def _allocated(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512  # the memmap is sparse: only written rows take space
    except (OSError, AttributeError):
        return 0


# ----------------------------------------------------------------------------------------------- extraction
@dataclass
class ExtractResult:
    path: Path              # the finished file, or the partial one when ``complete`` is false
    shape: tuple[int, ...]
    rows_done: int          # rows written so far, padding row 0 included
    complete: bool
    images: int             # covers encoded by this call
    seconds: float          # time spent in the extraction loop of this call

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


def extract_features(config, output=None, *, spatial: bool = False, device: str = "cpu",
                     batch_size: int | None = None, precision: str | None = None, workers: int | None = None,
                     max_batches: int | None = None, flush_every: int = 8, restart: bool = False,
                     overwrite: bool = False) -> ExtractResult:
    """Write the frozen features of every item of ``config``'s dataset to ``output`` (see the module docstring).

    ``batch_size``, ``precision`` and ``workers`` default to the config's ``cover_batch_size``, ``precision`` and
    ``num_workers``. ``max_batches`` stops this call after that many batches (the partial file stays; the next
    call continues). A partial file of other settings is an error unless ``restart`` discards it; an existing
    ``output`` is an error unless ``overwrite``.
    """
    output = Path(output) if output else default_output(config, spatial)
    if output.suffix != ".npy":
        raise FeatureExtractionError(f"--output {str(output)!r}: the feature file must end in .npy")
    batch_size = int(config["cover_batch_size"] if batch_size is None else batch_size)
    precision = precision or config["precision"]
    workers = config["num_workers"] if workers is None else int(workers)
    if batch_size < 1 or workers < 0 or flush_every < 1 or (max_batches is not None and max_batches < 1):
        raise FeatureExtractionError(f"need batch_size >= 1, workers >= 0, max_batches >= 1; got batch_size="
                                     f"{batch_size}, workers={workers}, max_batches={max_batches}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise FeatureExtractionError(f"precision {precision!r}: expected fp32, bf16 or fp16")
    dev = one_device(device)
    files = sidecars(output)
    if output.exists() and not overwrite:
        raise FeatureExtractionError(f"{output} already exists; pass --overwrite to replace it (it is replaced "
                                     f"only once the new file is complete) or choose another --output")

    inter = load_interactions(config["data_path"], config["dataset"], config["cache_dir"])
    store = CoverStore(cover_lmdb_path(config), inter.item_tokens)  # a missing database fails here
    check_covers(config, inter)  # every item needs a cover: name how many lack one, and which
    item_num = inter.item_num

    from ..model.encoders.backbone import NoFeatureMapError  # as FeatureExtractor: timm and open_clip load here

    model = FeatureExtractor(config, spatial).prepare(dev)
    try:
        with torch.inference_mode(), autocast(dev, precision):
            probe = model(torch.zeros(1, 3, store.height, store.width, dtype=torch.uint8, device=dev))
    except NoFeatureMapError as exc:  # a backbone that knows only at run time (timm: forward_features' shape)
        raise FeatureExtractionError(f"--spatial is not supported for encoder {model.encoder_name!r}: "
                                     f"{exc}") from None
    shape = (item_num, *probe.shape[1:])
    settings = {
        "dataset": config["dataset"], "items": item_num - 1, "items_sha256": inter.item_tokens.digest(),
        "encoder": model.encoder_name, "readout": None if spatial else model.readout, "spatial": spatial,
        "encoder_pretrained": bool(config["encoder_pretrained"]), "encoder_weights": config["encoder_weights"],
        "seed": None if config["encoder_pretrained"] else config["seed"],  # only random weights depend on it
        "image_norm": config["image_norm"], "image_size": model.image_size, "precision": precision,
        "shape": list(shape), "dtype": "float32",
    }

    _adopt_legacy_partial(output, files)
    rows_done = _open_partial(files, settings, restart)
    total_bytes = int(np.prod(shape)) * 4
    output.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(output.parent).free
    if total_bytes - _allocated(files["partial"]) > free:
        raise FeatureExtractionError(f"{output}: the features need {total_bytes / 1e9:.2f} GB "
                                     f"({'x'.join(map(str, shape))} float32) and {output.parent} has "
                                     f"{free / 1e9:.2f} GB free")
    if rows_done:
        array = np.lib.format.open_memmap(files["partial"], mode="r+")
    else:
        array = np.lib.format.open_memmap(files["partial"], mode="w+", dtype=np.float32, shape=shape)
        rows_done = 1  # row 0, the padding, is the file's zeros
        _save_progress(files["progress"], settings, rows_done, batch_size)
    log.info("frozen %s features of %d items (%s) from %s at %d px on %s (%s): %s -> %s (%.2f GB)%s",
             model.encoder_name, item_num - 1, "spatial" if spatial else f"{model.readout} readout", store.path,
             model.image_size, dev, precision, list(shape), output, total_bytes / 1e9,
             f"; continuing at row {rows_done}" if rows_done > 1 else "")

    rows = _CoverRows(store, rows_done, item_num, batch_size)
    loader = DataLoader(rows, batch_size=None, num_workers=workers, pin_memory=dev.type == "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape for the whole run
    bar = tqdm(total=item_num - 1, initial=rows_done - 1, unit="img", desc="features", dynamic_ncols=True,
               disable=not config["show_progress"])
    # Subnormal activations (random weights, and some pretrained nets in their last layers) take x86's slow path:
    # up to 5x slower in fp32 on CPU. Flushed to zero they change nothing a recommender could see (< 1.2e-38).
    flushing = dev.type == "cpu" and torch.set_flush_denormal(True)
    start, images, batches, since_flush = time.perf_counter(), 0, 0, 0
    try:
        with torch.inference_mode(), autocast(dev, precision):
            for covers in loader:
                feats = model(covers.to(dev, non_blocking=True)).float()
                n = len(covers)
                array[rows_done:rows_done + n] = feats.cpu().numpy()
                rows_done, images, batches, since_flush = rows_done + n, images + n, batches + 1, since_flush + 1
                bar.update(n)
                if since_flush >= flush_every:
                    array.flush()
                    _save_progress(files["progress"], settings, rows_done, batch_size)
                    since_flush = 0
                if batches == max_batches:
                    break
    finally:  # also on Ctrl-C: the rows written so far are kept for the next run
        seconds = time.perf_counter() - start
        if flushing:
            torch.set_flush_denormal(False)  # the process default
        bar.close()
        array.flush()
        del array
        _save_progress(files["progress"], settings, rows_done, batch_size)

    if rows_done < item_num:
        log.info("stopped after %d batches at row %d of %d; rerun the same command to continue (%s)",
                 batches, rows_done, item_num, files["partial"])
        return ExtractResult(files["partial"], shape, rows_done, False, images, seconds)
    _finish(output, files, settings, inter.item_tokens)
    log.info("wrote %s %s: %d covers in %.1f s (%.1f images/s)", output, list(shape), images, seconds,
             images / seconds if seconds > 0 else float("nan"))
    return ExtractResult(output, shape, rows_done, True, images, seconds)


def _save_progress(path: Path, settings: dict, rows_done: int, batch_size: int) -> None:
    write_text_atomic(path, json.dumps({"format": FORMAT, "version": VERSION, "settings": settings,
                                    "rows_done": rows_done, "batch_size": batch_size,
                                    "batches_done": -(-(rows_done - 1) // batch_size)}, indent=1))


def _adopt_legacy_partial(output: Path, files: dict[str, Path]) -> None:
    """An extraction interrupted before the sidecar rule (``F.npy.partial``, ``F.npy.partial.json``) continues
    under the new names instead of starting afresh and leaving hours of work beside the output."""
    old_partial, old_progress = Path(f"{output}.partial"), Path(f"{output}.partial.json")
    if files["partial"].exists() or not old_partial.exists():
        return
    log.info("continuing %s as %s (the earlier name of the partial file)", old_partial, files["partial"])
    os.replace(old_partial, files["partial"])
    if old_progress.exists():
        os.replace(old_progress, files["progress"])


def _open_partial(files: dict[str, Path], settings: dict, restart: bool) -> int:
    """Rows already done by an earlier run of the same settings (0: start afresh). A partial file of other
    settings is an error unless ``restart``: silently discarding hours of extraction is worse than asking."""
    partial, progress_file = files["partial"], files["progress"]
    progress = _read_progress(progress_file) if progress_file.exists() else None
    if restart or not partial.exists() or progress is None:
        if partial.exists() and not restart:
            log.warning("%s has no readable progress record %s; starting afresh", partial, progress_file)
        partial.unlink(missing_ok=True)
        progress_file.unlink(missing_ok=True)
        return 0
    old = progress.get("settings") or {}
    changed = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in settings.items() if old.get(k) != v]
    if changed:
        raise FeatureExtractionError(f"{partial} was started with other settings ({'; '.join(changed)}); rerun "
                                     f"with the options it was started with to continue it, or pass --restart "
                                     f"to discard it")
    try:
        head = np.load(partial, mmap_mode="r")
        ok = head.shape == tuple(settings["shape"]) and head.dtype == np.float32
        del head
    except (ValueError, OSError):
        ok = False
    if not ok:
        raise FeatureExtractionError(f"{partial} is not a float32 array of shape {settings['shape']} as its "
                                     f"progress record says; pass --restart to discard it")
    return int(progress["rows_done"])


def _finish(output: Path, files: dict[str, Path], settings: dict, tokens) -> None:
    """Sidecars first, then the atomic rename: a reader that finds ``output`` also finds what its rows are, and
    the CRC-32s of its bytes, which the ViNet reader checks (``REC.model.ViNet.feature_table``)."""
    write_text_atomic(files["items"], "\n".join(tokens.to_list()) + "\n")
    npy_layout(files["partial"], tuple(settings["shape"]), np.float32)  # the rows the record covers, whole
    meta = {"format": FORMAT, "version": VERSION, **settings, "items_file": files["items"].name,
            "rows": "row i = internal item id i (first appearance in the CSV); row 0 = padding, zeros",
            "checksum": checksum_record(files["partial"])}
    write_text_atomic(files["meta"], json.dumps(meta, indent=1))
    os.replace(files["partial"], output)
    files["progress"].unlink(missing_ok=True)
