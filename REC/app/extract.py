"""Frozen image features of every item, for the ViNet models: the library behind ``python -m REC features``.

The original shipped its feature files (``RN50.npy``, ``RN50_layer4.npy``) as downloads and no code that made
them. Here they come from the same item encoders PixelNet trains (``REC.model.encoders``), frozen:

- a feature is the backbone's readout WITHOUT the projection head (``Backbone.pooled``; ``RN50.npy`` is the
  2048-d pooled ResNet output), or with ``spatial`` the last feature map ``[H, W, D]`` (CNNs, Swin) or patch
  tokens ``[R, D]`` (ViT, BEiT) for ACF (``Backbone.feature_map``); covers are normalised and resized exactly
  as PixelNet does (``CoverItems.pixels``);
- the file ``F.npy`` is a per-item array file (``REC.data.item_array``): ``[item_num, ...]`` float32, row i =
  internal item id i, row 0 (padding) zeros, with the item token of every row in ``F.items.txt`` and in
  ``F.json`` the dataset's item identity, the settings that made the rows and a CRC-32 per chunk, which the ViNet
  reader checks (files of the earlier format, and other tools' files without a description, still load);
- extraction writes chunks of ``cover_batch_size`` items into ``F.npy.part``, each marked done once on disk; a
  rerun with the same settings continues at the first missing chunk (a partial file of the earlier format,
  ``F.partial``, is continued too), and the finished file is renamed into place, so ``F.npy`` is never half
  written and an ``--overwrite`` replaces it only once the new one is complete.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, ConfigError
from .configure import build_config
from ..data import load_interactions
from ..data.cover_batches import ChunkCovers, check_covers, cover_lmdb_path
from ..data.covers import CoverStore
from ..data.item_array import ItemArrayFile, ItemIdentity, read_json
from ..utils.integrity import DamagedFileError
from ..utils.precision import autocast
from ..distributed import one_device
from ..utils.errors import UserError

log = logging.getLogger(__name__)

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


class FeatureFile(ItemArrayFile):
    """A feature file being written (``REC.data.item_array``): its errors are the extraction's one-line errors."""

    error = FeatureExtractionError

    @property
    def what(self) -> str:
        return f"feature file {self.path}"


def legacy_partial(output: Path) -> tuple[Path, Path] | None:
    """(rows, progress record) of an extraction interrupted before the shared per-item file type: ``F.partial``
    and ``F.partial.json``, or their earlier names ``F.npy.partial`` and ``F.npy.partial.json``; None if none."""
    stem = output.name[:-len(".npy")]
    for rows, progress in ((f"{stem}.partial", f"{stem}.partial.json"),
                           (f"{output.name}.partial", f"{output.name}.partial.json")):
        if (output.parent / rows).exists():
            return output.parent / rows, output.parent / progress
    return None


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
                     max_batches: int | None = None, restart: bool = False,
                     overwrite: bool = False) -> ExtractResult:
    """Write the frozen features of every item of ``config``'s dataset to ``output`` (see the module docstring).

    ``batch_size``, ``precision`` and ``workers`` default to the config's ``cover_batch_size``, ``precision`` and
    ``num_workers``; a new file is written in chunks of ``batch_size`` items (a resumed one keeps its chunks and
    encodes ``batch_size`` covers per forward). ``max_batches`` stops this call after that many chunks (the
    partial file stays; the next call continues). A partial file of other settings is an error unless
    ``restart`` discards it; an existing ``output`` is an error unless ``overwrite``.
    """
    output = Path(output) if output else default_output(config, spatial)
    if output.suffix != ".npy":
        raise FeatureExtractionError(f"--output {str(output)!r}: the feature file must end in .npy")
    batch_size = int(config["cover_batch_size"] if batch_size is None else batch_size)
    precision = precision or config["precision"]
    workers = config["num_workers"] if workers is None else int(workers)
    if batch_size < 1 or workers < 0 or (max_batches is not None and max_batches < 1):
        raise FeatureExtractionError(f"need batch_size >= 1, workers >= 0, max_batches >= 1; got batch_size="
                                     f"{batch_size}, workers={workers}, max_batches={max_batches}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise FeatureExtractionError(f"precision {precision!r}: expected fp32, bf16 or fp16")
    dev = one_device(device)
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
    target = FeatureFile(output, ItemIdentity.of(config["dataset"], inter.item_tokens), "features", shape[1:],
                         "float32", batch_size, settings, room_hint="choose another --output on a larger disk")
    _continue_legacy_partial(target, restart)
    state = target.create(restart=restart, rebuild=output.exists())
    pending = target.pending()
    log.info("frozen %s features of %d items (%s) from %s at %d px on %s (%s): %s -> %s (%.2f GB)%s",
             model.encoder_name, item_num - 1, "spatial" if spatial else f"{model.readout} readout", store.path,
             model.image_size, dev, precision, list(shape), output, target.nbytes / 1e9,
             f"; continuing with {len(pending)} of {target.n_chunks} chunks left" if state == "partial" else "")

    todo = pending[:max_batches] if max_batches is not None else pending
    loader = DataLoader(ChunkCovers(target, store, todo), batch_size=None, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape for the whole run
    bar = tqdm(total=item_num - 1, initial=item_num - 1 - _items_in(target, pending), unit="img", desc="features",
               dynamic_ncols=True, disable=not config["show_progress"])
    # Subnormal activations (random weights, and some pretrained nets in their last layers) take x86's slow path:
    # up to 5x slower in fp32 on CPU. Flushed to zero they change nothing a recommender could see (< 1.2e-38).
    flushing = dev.type == "cpu" and torch.set_flush_denormal(True)
    start, images, chunks = time.perf_counter(), 0, 0
    try:
        with torch.inference_mode(), autocast(dev, precision):
            for c, covers in loader:
                feats = [model(part.to(dev, non_blocking=True)).float() for part in covers.split(batch_size)]
                target.write(c, torch.cat(feats) if len(feats) > 1 else feats[0])  # on disk, then marked done
                images, chunks = images + len(covers), chunks + 1
                bar.update(len(covers))
    except BaseException:  # also on Ctrl-C: the chunks written so far are kept for the next run
        target.release()
        raise
    finally:
        seconds = time.perf_counter() - start
        if flushing:
            torch.set_flush_denormal(False)  # the process default
        bar.close()

    left = target.pending()
    rows_done = item_num - _items_in(target, left)
    if left:
        target.release()
        log.info("stopped after %d chunks at %d of %d rows; rerun the same command to continue (%s)",
                 chunks, rows_done, item_num, target.part_path)
        return ExtractResult(target.part_path, shape, rows_done, False, images, seconds)
    target.finish(inter.item_tokens)  # still holding the lock: no other build starts before the rename
    log.info("wrote %s %s: %d covers in %.1f s (%.1f images/s)", output, list(shape), images, seconds,
             images / seconds if seconds > 0 else float("nan"))
    return ExtractResult(output, shape, rows_done, True, images, seconds)


def _items_in(target: ItemArrayFile, chunks: list[int]) -> int:
    return sum(len(target.chunk_items(c)) for c in chunks)


def _continue_legacy_partial(target: FeatureFile, restart: bool) -> None:
    """An extraction interrupted before the shared per-item file type (``legacy_partial``) continues in the new
    layout: its rows become the build's, its whole chunks of its own batch size counted done, instead of
    starting afresh and leaving hours of work beside the output. Of other settings, it is an error unless
    ``restart`` discards it."""
    found = legacy_partial(target.path)
    if found is None:
        return
    rows, progress_file = found
    progress = read_json(progress_file)
    if restart or progress is None or target.part_path.exists():
        if not restart:
            log.warning("%s: %s; starting afresh", rows, "a newer build is in progress beside it"
                        if target.part_path.exists() else f"no readable progress record {progress_file.name}")
        rows.unlink(missing_ok=True)
        progress_file.unlink(missing_ok=True)
        return
    old = progress.get("settings") or {}
    changed = [f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in target.settings.items() if old.get(k) != v]
    if changed:
        raise FeatureExtractionError(f"{rows} was started with other settings ({'; '.join(changed)}); rerun with "
                                     f"the options it was started with to continue it, or pass --restart to "
                                     f"discard it")
    try:
        target.adopt_rows(rows, int(progress["rows_done"]), int(progress["batch_size"]))
    except (DamagedFileError, KeyError, TypeError, ValueError) as exc:
        raise FeatureExtractionError(f"{rows} is not the float32 array of shape {target.settings['shape']} that "
                                     f"{progress_file.name} describes ({exc}); pass --restart to discard it") from None
    progress_file.unlink(missing_ok=True)
    log.info("continuing %s (the earlier partial-file format) as %s", rows, target.part_path)
