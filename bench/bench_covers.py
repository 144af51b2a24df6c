"""Covers database: packing speed (1 worker vs all cores), size on disk per encoding, CoverStore.get throughput.

    python -m bench.bench_covers [--n 2000] [--width 400 --height 300] [--size 224] [--folder /tmp/pixelrec_bench_covers]

Makes N synthetic JPEG covers (smooth colour fields plus noise, so they compress like photos rather than like
pure noise), packs them with pack_covers, then reads random batches of 256 through CoverStore.get. Reads run
on a warm page cache (the database was just written), so they measure decoding and copying, not the disk.
"""
import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from REC.data import TokenTable
from REC.data.cover_pack import pack_covers
from REC.data.covers import CoverStore


def make_covers(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    covers = folder / "cover"
    tokens = [f"i{k}" for k in range(n)]
    marker = folder / f".made-{n}-{width}x{height}"
    if marker.exists():
        return tokens
    shutil.rmtree(folder, ignore_errors=True)
    covers.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    for t in tokens:
        freq, phase = rng.uniform(1, 8, size=(3, 2)), rng.uniform(0, 6, size=3)
        field = np.stack([127 + 110 * np.sin(f[0] * x + f[1] * y + p) for f, p in zip(freq, phase)], -1)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(covers / f"{t}.jpg", quality=90)
    rows = [f"{t},u{k % 97},{k}" for k, t in enumerate(tokens)]
    (folder / "Bench.csv").write_text("item_id,user_id,timestamp\n" + "\n".join(rows) + "\n")
    marker.touch()
    return tokens


def pack(folder: Path, name: str, **kwargs):
    out = folder / name
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    report = pack_covers(folder / "Bench.csv", folder / "cover", out, **kwargs)
    seconds = time.perf_counter() - start
    assert report.ok and report.stored == report.items, report.summary()
    return out, seconds, (out / "data.mdb").stat().st_size


def read_rate(out: Path, tokens: list[str], batch: int, max_batches: int, budget_s: float = 5.0) -> float:
    store = CoverStore(out, TokenTable.from_strings(tokens))
    rng = np.random.default_rng(1)
    store.get(rng.integers(1, len(tokens) + 1, size=batch))  # opens the environment
    done, start = 0, time.perf_counter()
    for _ in range(max_batches):
        store.get(rng.integers(1, len(tokens) + 1, size=batch))
        done += batch
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="number of synthetic covers")
    p.add_argument("--width", type=int, default=400, help="source cover width")
    p.add_argument("--height", type=int, default=300, help="source cover height")
    p.add_argument("--size", type=int, default=224, help="packed size (size x size)")
    p.add_argument("--batch", type=int, default=256, help="covers per CoverStore.get call")
    p.add_argument("--read_batches", type=int, default=40, help="at most this many batches per read timing")
    p.add_argument("--folder", default="/tmp/pixelrec_bench_covers", help="where covers and databases go")
    p.add_argument("--keep", action="store_true", help="keep the databases (the source covers are always kept)")
    args = p.parse_args()

    folder = Path(args.folder)
    start = time.perf_counter()
    tokens = make_covers(folder, args.n, args.width, args.height)
    print(f"{args.n} synthetic {args.width}x{args.height} JPEG covers in {folder / 'cover'} "
          f"({time.perf_counter() - start:.1f} s); {os.cpu_count()} cores; packed to {args.size}x{args.size}")

    cores = os.cpu_count() or 1
    rows = []
    for workers in sorted({1, cores}):
        _, seconds, size = pack(folder, f"raw-w{workers}.lmdb", size=args.size, encoding="raw", workers=workers)
        rows.append(("raw", workers, seconds, size))
    for encoding in ("png", "jpeg"):
        _, seconds, size = pack(folder, f"{encoding}-w{cores}.lmdb", size=args.size, encoding=encoding,
                                workers=cores)
        rows.append((encoding, cores, seconds, size))

    print(f"\n{'encoding':<9}{'workers':>8}{'pack s':>9}{'covers/s':>10}{'DB MB':>9}{'KB/cover':>10}{'read covers/s':>15}")
    for encoding, workers, seconds, size in rows:
        rate = read_rate(folder / f"{encoding}-w{workers}.lmdb", tokens, args.batch, args.read_batches)
        print(f"{encoding:<9}{workers:>8}{seconds:>9.2f}{args.n / seconds:>10.0f}{size / 1e6:>9.1f}"
              f"{size / args.n / 1e3:>10.1f}{rate:>15.0f}")
    print(f"\nread = CoverStore.get on random batches of {args.batch} ids, one process, warm page cache")
    if not args.keep:
        for encoding, workers, _, _ in rows:
            shutil.rmtree(folder / f"{encoding}-w{workers}.lmdb", ignore_errors=True)


if __name__ == "__main__":
    main()
