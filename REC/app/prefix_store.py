"""``encoder_cache``: decide whether a PixelNet run stores its encoder's frozen prefix, build the store once
(sharded across ranks, resumable, with a progress bar) and point training and evaluation at it.

The store's file format lives in ``REC.data.prefix_cache``; what the prefix is, in
``REC.model.encoders.ItemEncoder``; whether storing it changes anything, in ``REC.model.pixel.CoverItems``.
"""
from __future__ import annotations

import logging
import time
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm import tqdm

from .. import distributed as dist
from ..data.cover_batches import ChunkCovers, cover_lmdb_path
from ..data.interactions import prepared_data_dir
from ..data.item_array import human_bytes, read_json
from ..data.prefix_cache import PrefixCache, PrefixCacheError, files_digest
from ..utils.integrity import folder_is_writable
from ..utils.precision import autocast
from ..model.pixel import PrefixPlan

log = logging.getLogger(__name__)


def prefix_plan(config, model) -> PrefixPlan | None:
    """None for models without covers; else what ``encoder_cache`` means for this model's encoder."""
    if not getattr(model, "encodes_covers", False):
        return None
    return model.cover_items_module.prefix_plan(config["encoder_cache"])


def store_dir(config) -> Path:
    return Path(config["encoder_cache_dir"]) if config["encoder_cache_dir"] else \
        prepared_data_dir(config["data_path"], config["dataset"], config["cache_dir"])


def store_dtype(config) -> str:
    """bf16 runs store bfloat16 rows (half the bytes; the run computes in bf16 anyway); fp32 and fp16 runs
    store float32, so an fp32 run with the store is the same computation as without it."""
    return "bfloat16" if config["precision"] == "bf16" else "float32"


def prefix_shape(items, device) -> tuple[int, ...]:
    """The prefix's output shape for one cover (a one-image forward; free on the meta device)."""
    covers = torch.zeros(1, 3, *items.cover_size, dtype=torch.uint8, device=device)
    was_training = items.training
    items.eval()  # BatchNorm cannot normalise a single 1x1 map in training mode; the store is computed like this
    try:
        return tuple(items.prefix_of_covers(covers).shape[1:])
    finally:
        items.train(was_training)


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute the stored rows, read from their installed metadata: importing
    timm and open_clip here would load them into every command that imports this module, image model or not."""
    return dict(torch=torch.__version__, timm=version("timm"), open_clip=version("open_clip_torch"))


def describe_store(config, items, inter) -> dict:
    """Everything the rows depend on: the encoder side (``CoverItems.prefix_description``), the dtype, the
    covers database, the run's item ids (row order), and the libraries that compute them."""
    lmdb = cover_lmdb_path(config)
    return dict(items.prefix_description(), dtype=store_dtype(config), item_ids=inter.item_tokens.digest(),
                covers=str(lmdb.resolve()), covers_files=files_digest(lmdb),
                versions=library_versions())


def log_plan(config, model, split) -> PrefixPlan | None:
    """Preflight (meta device): say whether the store is used and how large it is, and refuse when its disk
    cannot hold it, before any process starts."""
    plan = prefix_plan(config, model)
    if plan is None:
        return None
    if not plan.use:  # a warning when the user asked for the store and cannot have it
        (log.warning if config["encoder_cache"] == "on" else log.info)(
            "encoder_cache: %s: every cover goes through the whole encoder at every step (%s)",
            config["encoder_cache"], plan.reason)
        return plan
    if plan.changes:
        untrained = any("batch statistics" in c for c in plan.changes) and not config["encoder_pretrained"]
        log.warning("encoder_cache: on, although %s; the frozen part is stored as computed in evaluation mode, so "
                    "training no longer sees those effects in it (see docs/original.md, PixelNet)%s",
                    ", ".join(plan.changes), "; with random weights BatchNorm's running statistics are untrained "
                    "(mean 0, variance 1), which leaves the frozen stages unnormalised" if untrained else "")
    items = model.cover_items_module
    shape = prefix_shape(items, "meta")
    folder = store_dir(config)
    probe = PrefixCache(folder, config["dataset"], {}, split.item_num, shape, store_dtype(config),
                        config["cover_batch_size"])
    log.info("encoder_cache: the encoder's frozen front (%s) is stored once per item: %d items x %s x %d bytes "
             "= %s in %s", plan.reason, split.item_num - 1, " x ".join(map(str, shape)),
             probe.itemsize, human_bytes(probe.nbytes), folder)
    if not _reusable_store_exists(probe):
        probe.check_room()
    return plan


def _reusable_store_exists(probe: PrefixCache) -> bool:
    """A complete store of the same dataset and shape may be this run's (its key needs the real weights,
    known only once processes run); the room check is then left to the build."""
    for meta_path in probe.meta_path.parent.glob(probe.meta_path.name.replace(probe.key, "*")):
        meta = read_json(meta_path)
        if meta and meta.get("complete") and meta.get("shape") == list(probe.shape):
            return True
    return False


def attach_prefix_store(config, model, inter, split, device, covers, train_batches=None, item_covers=None):
    """Build (or reuse) the store for the model's current weights and point ``train_batches``
    (``BatchesWithCovers``) and ``item_covers`` (``ItemCoverBatches``) at it. Call once the frozen weights are
    final (after init_from, resume or a checkpoint load). Collective: every rank calls it."""
    plan = prefix_plan(config, model)
    if plan is None or not plan.use:
        return None
    items = model.cover_items_module
    store = PrefixCache(store_dir(config), config["dataset"], describe_store(config, items, inter), split.item_num,
                        prefix_shape(items, device), store_dtype(config), config["cover_batch_size"])
    fill_store(store, items, covers, device, config["precision"], config["show_progress"], config["num_workers"],
               batch_size=config["cover_batch_size"])
    for batches in (train_batches, item_covers):
        if batches is not None:
            batches.prefix = store
    return store


def fill_store(store: PrefixCache, items, covers, device, precision: str, show_progress: bool, workers: int,
               batch_size: int | None = None) -> None:
    """Rank 0 creates the files (or finds them complete, or partly built by a killed run); every rank then
    encodes its share of the chunks still missing, ``batch_size`` covers per forward (None: a chunk at a time);
    rank 0 marks the store complete. A store found on disk keeps its chunks (``PrefixCache.create``), so the
    forward size is this run's ``cover_batch_size`` whatever the store's chunk."""
    state = None
    if dist.rank() == 0:
        try:
            state = (store.create(), store.chunk)
        except (PrefixCacheError, OSError) as exc:
            state = (f"error: {exc}", None)
    state, chunk = dist.broadcast_object(state)
    if state.startswith("error: "):
        raise PrefixCacheError(state[len("error: "):])
    if state == "complete":
        if verify_store(store):
            log.info("encoder_cache: reusing %s (%s)", store.path, human_bytes(store.nbytes))
            return
        # damaged and its folder writable: rank 0 marked it not complete; build it again, once
        return fill_store(store, items, covers, device, precision, show_progress, workers, batch_size)
    store.chunk = chunk  # every rank splits the work by the store's own chunks
    try:
        written = _encode_pending(store, state, items, covers, device, precision, show_progress, workers, batch_size)
    finally:
        store.release()  # rank 0's lock, on an error too: a later build (or resume) must not wait for it
    # the chunks this run wrote are sound; a resumed build's earlier chunks (a killed run's) are checked now
    earlier = sorted(set(range(store.n_chunks)) - set(written))
    if earlier and not verify_store(store, earlier):
        return fill_store(store, items, covers, device, precision, show_progress, workers, batch_size)
    store.mark_verified()


def verify_store(store: PrefixCache, chunks=None) -> bool:
    """Check the CRC-32 of every chunk (or of ``chunks``) of a complete store once, each rank a share, before any
    step reads it (the readers forked later inherit the result, so a step pays nothing). True when sound.
    Damaged: with a writable folder, a warning, the store marked not complete on rank 0 and forgotten on every
    rank (False: the caller rebuilds it); else PrefixCacheError on every rank. Collective."""
    t0 = time.perf_counter()
    try:
        sound, why = store.sound_complete()  # every rank reads the recorded checksums
        if not sound:
            raise PrefixCacheError(f"{store.path}: no complete store to check ({why})")
        everything = list(range(store.n_chunks)) if chunks is None else list(chunks)
        result = store.verify(everything[dist.rank()::dist.world_size()])
    except (PrefixCacheError, OSError) as exc:  # every rank stops with the message, none waits in a collective
        result = f"{exc}"
    parts = dist.gather_objects(result)
    errors = [p for p in parts if isinstance(p, str)]
    if errors:
        raise PrefixCacheError(errors[0])
    bad = sorted(c for part in parts for c in part)
    if not bad:
        store.mark_verified()  # the other ranks checked the rest
        log.info("encoder_cache: %d chunks of %s match their CRC-32 (%.1f s)", len(everything), store.path.name,
                 time.perf_counter() - t0)
        return True
    message = store.damage_message(bad)
    writable = dist.broadcast_object(folder_is_writable(store.path.parent) if dist.rank() == 0 else None)
    if not writable:
        raise PrefixCacheError(f"{message}; its folder cannot be written, so it is not rebuilt here: rebuild it "
                               f"where it can be written (key 'encoder_cache_dir'), or set encoder_cache: off")
    log.warning("encoder_cache: %s; rebuilding it", message)
    error = None
    if dist.rank() == 0:
        try:
            store.invalidate()
        except OSError as exc:
            error = f"{store.meta_path}: cannot mark the damaged store for a rebuild ({exc})"
    error = dist.broadcast_object(error)
    store.close()  # every rank: the rebuilt file is read afresh
    if error:
        raise PrefixCacheError(error)
    return False


def _encode_pending(store, state, items, covers, device, precision, show_progress, workers, batch_size) -> list[int]:
    """Encode and write the pending chunks (each rank its share); returns the chunks this run wrote."""
    pending = store.pending()
    mine = pending[dist.rank()::dist.world_size()]
    log.info("encoder_cache: %s %s: %d of %d chunks of %d items to encode (%d on this rank)",
             "building" if state == "new" else "resuming", store.path, len(pending), store.n_chunks, store.chunk,
             len(mine))
    was_training = items.training
    items.eval()  # the stored prefix is its evaluation-mode output (the same in training mode where auto uses it)
    t0 = time.perf_counter()
    loader = torch.utils.data.DataLoader(ChunkCovers(store, covers, mine), batch_size=None, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    try:
        for c, chunk_covers in tqdm(loader, total=len(mine), desc="encoder cache", unit="chunk",
                                    disable=not (show_progress and dist.is_main())):
            with torch.no_grad(), autocast(device, precision):
                rows = [items.prefix_of_covers(part.to(device, non_blocking=True))
                        for part in chunk_covers.split(batch_size or len(chunk_covers))]
            store.write(c, torch.cat(rows) if len(rows) > 1 else rows[0])
    finally:
        items.train(was_training)
    dist.barrier()
    error = None
    if dist.rank() == 0:
        try:
            store.finish()
        except (PrefixCacheError, OSError) as exc:
            error = str(exc)
    error = dist.broadcast_object(error)
    if error:
        raise PrefixCacheError(error)
    log.info("encoder_cache: %s complete (%s) in %.1f s", store.path, human_bytes(store.nbytes),
             time.perf_counter() - t0)
    return pending
