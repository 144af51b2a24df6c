"""What checking stored artifacts costs: the frozen-prefix store's per-run check of every chunk's CRC-32, a step's
row reads after it, and a feature file's check, on files of a given size written here (random rows).

    python -m bench.bench_integrity --items 2000 --shape 50 768     # a ViT-B/32 prefix store of 2,000 items

Prints GB/s of the check, the seconds it takes for the store (and scaled to Pixel200K's 96,282 items), and the
mean time of a training step's row read (a batch of distinct items) with the check done and without any check.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from REC.data.prefix_cache import PrefixCache
from REC.app.prefix_store import verify_store
from REC.data.item_array import ItemArrayFile, ItemIdentity

PIXEL200K_ITEMS = 96_282


def build(folder: Path, items: int, shape: tuple[int, ...], chunk: int) -> PrefixCache:
    store = PrefixCache(folder, "Bench", {"bench": 1}, items + 1, shape, "float32", chunk)
    assert store.create() == "new"
    g = torch.Generator().manual_seed(0)
    for c in range(store.n_chunks):
        store.write(c, torch.randn(len(store.chunk_items(c)), *shape, generator=g))
    store.finish()
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=2000)
    p.add_argument("--shape", type=int, nargs="+", default=[50, 768])
    p.add_argument("--chunk", type=int, default=256, help="items per chunk (the build's cover_batch_size)")
    p.add_argument("--batch_items", type=int, default=566, help="distinct items a training step reads")
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build(Path(tmp), args.items, tuple(args.shape), args.chunk)
        gb = store.nbytes / 1e9
        reader = PrefixCache(Path(tmp), "Bench", {"bench": 1}, args.items + 1, tuple(args.shape), "float32", 1)
        reader.rows(np.arange(1, 2))  # map it, page cache warm (written just now)
        reader.verified[:] = False
        reader._all_verified = False
        t0 = time.perf_counter()
        assert verify_store(reader)
        check_s = time.perf_counter() - t0
        print(f"store: {args.items:,} items x {' x '.join(map(str, args.shape))} float32 = {gb:.2f} GB in "
              f"{store.n_chunks} chunks; full check {check_s:.2f} s = {gb / check_s:.2f} GB/s (page cache warm); "
              f"scaled to Pixel200K's {PIXEL200K_ITEMS:,} items: {check_s * PIXEL200K_ITEMS / args.items:.0f} s "
              f"once per run")
        rng = np.random.default_rng(0)
        batches = [np.sort(rng.choice(np.arange(1, args.items + 1), args.batch_items, replace=False))
                   for _ in range(args.steps)]
        checked = PrefixCache(Path(tmp), "Bench", {"bench": 1}, args.items + 1, tuple(args.shape), "float32", 1)
        checked.sound_complete()
        checked.mark_verified()
        raw = np.load(store.path, mmap_mode="r")
        for name, read in (("PrefixCache.rows after the run's check", checked.rows),
                           ("the bare memory map, no check", lambda ids: np.ascontiguousarray(raw[ids]))):
            read(batches[0])
            t0 = time.perf_counter()
            for ids in batches:
                read(ids)
            print(f"row read of {args.batch_items} distinct items, {name}: "
                  f"{(time.perf_counter() - t0) / args.steps * 1e3:.2f} ms per step")
        lazy = PrefixCache(Path(tmp), "Bench", {"bench": 1}, args.items + 1, tuple(args.shape), "float32", 1)
        t0 = time.perf_counter()
        for ids in batches:
            lazy.rows(ids)
        print(f"row reads of a process that checks each chunk on first read (first {args.steps} steps): "
              f"{(time.perf_counter() - t0) / args.steps * 1e3:.2f} ms per step, "
              f"{int(lazy.verified.sum())} of {lazy.n_chunks} chunks checked")

        features = Path(tmp) / "features.npy"
        rows = np.random.default_rng(0).standard_normal((args.items * 10 + 1, 2048), dtype=np.float32)
        written = ItemArrayFile(features, ItemIdentity("Bench", None, len(rows)), "features", (2048,), "float32",
                                chunk=args.chunk)
        written.create()
        for c in written.pending():
            items = written.chunk_items(c)
            written.write(c, rows[items[0]:items[-1] + 1])
        written.finish()
        del rows
        t0 = time.perf_counter()
        reader = ItemArrayFile.on_disk(features)
        assert reader.sound_complete()[0] and reader.verify() == []
        s = time.perf_counter() - t0
        size = features.stat().st_size / 1e9
        print(f"feature file {args.items * 10:,} x 2048 float32 ({size:.2f} GB): check {s:.2f} s = "
              f"{size / s:.2f} GB/s; Pixel200K's RN50 file ({PIXEL200K_ITEMS:,} x 2048, "
              f"{PIXEL200K_ITEMS * 2048 * 4 / 1e9:.2f} GB): {s * PIXEL200K_ITEMS / (args.items * 10):.1f} s per load")


if __name__ == "__main__":
    main()
