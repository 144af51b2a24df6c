"""Data phases at Pixel8M / PixelRec scale: wall time and memory per phase, cold and warm, 1 and 2 ranks, with a fit
projected to the full sets.

    python -m bench.bench_scale --interactions 8M,32M,64M --items 400000 [--folder /tmp/pixelrec_scale]
    python -m bench.bench_scale --csv path/to/Log.csv

Each size gets a generated log shaped like Pixel8M (``REC.data.synthetic.pixel_shaped_log``: Pareto user lengths
from 5 into the thousands, Zipf item popularity, ties of timestamps, rows in no particular order), written once.
Every measurement runs in a fresh child process, so each peak (VmHWM) belongs to that phase's process alone:

- cold: preparation from the CSV (parse, number ids, sort, write the cache);
- warm, 1 rank: cache read, leave-one-out split, SASRec's training examples (chunks of 51), one batch of them,
  and a pass over the first evaluation batches; the RSS after each phase;
- warm, N ranks: the same in N processes at once, joined in a gloo process group as DDP ranks are (so what rank 0
  builds for all, the training examples, is shared); their summed peak and PSS.

Then a least-squares line through the cold peaks (MiB = a + b * interactions) and a power law through the cold
times (s = c * interactions^p), projected to Pixel8M (158.5M) and PixelRec (195.8M). The last line printed is
``peak_rss_mib=<cold preparation peak>`` of the largest log measured.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"Pixel8M": 158_500_000, "PixelRec": 195_800_000}

COLD = r"""
import json, sys, time
from REC.data import load_interactions
from REC.utils.memory import peak_rss_mib
t = time.perf_counter(); inter = load_interactions(sys.argv[1], sys.argv[2], sys.argv[3])
print(json.dumps(dict(seconds=time.perf_counter() - t, peak_mib=peak_rss_mib(), interactions=len(inter.items),
                      users=inter.user_num - 1, items=inter.item_num - 1)))
"""

WARM = r"""
import json, sys, time
from REC.data import EvalBatches, leave_one_out, load_interactions
from REC.data.training.next_item import NextItemBatches
from REC.utils.memory import peak_rss_mib, pss_mib, rss_mib
folder, name, cache, rank, world = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if world > 1:  # a real process group, as DDP ranks have: what one rank builds for all is shared
    import torch.distributed
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[6]}", rank=rank,
                                         world_size=world)
phases = {}
def phase(label, fn):
    t = time.perf_counter(); out = fn()
    phases[label] = dict(seconds=time.perf_counter() - t, rss_mib=rss_mib(), peak_mib=peak_rss_mib())
    return out
inter = phase("cache read", lambda: load_interactions(folder, name, cache))
config = {"MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 64, "seed": 0, "data_path": folder, "dataset": name,
          "cache_dir": cache}
def shared_split():  # as REC.app.loaded_run does for a run: the training part is shared by the ranks of a node
    import dataclasses
    from REC.data.node_shared import shared_on_node
    split = leave_one_out(inter)
    return dataclasses.replace(split, train_items=shared_on_node("train-items", config, lambda: split.train_items))
split = phase("split", shared_split)
examples = phase("training examples", lambda: NextItemBatches(split, config, rank, world))
phase("one training batch", lambda: next(iter(examples)))
evals = EvalBatches(split.test, 50, 4096, rank, world)
def first_batches(n=20):
    for k, _ in zip(range(n), evals):
        pass
phase("20 evaluation batches", first_batches)
print(json.dumps(dict(phases=phases, peak_mib=peak_rss_mib(), pss_mib=pss_mib())))
"""


def child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def children(code: str, argsets: list[tuple]) -> list[dict]:
    procs = [subprocess.Popen([sys.executable, "-c", code, *map(str, a)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in argsets]
    results = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            sys.exit(stderr[-3000:])
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def measure(csv: Path, ranks: list[int], work: Path) -> dict:
    """``work``: where the prepared cache and the shared arrays go (never beside a given CSV, whose folder may
    be read-only or shared)."""
    folder, name = csv.parent, csv.stem
    cache = work / f".bench_scale_cache_{name}"
    cache.mkdir(parents=True, exist_ok=True)
    for f in cache.glob("*"):
        f.unlink()
    cold = child(COLD, folder, name, cache)
    print(f"\n{name}: {cold['interactions']:,} interactions, {cold['users']:,} users, {cold['items']:,} items")
    print(f"  cold preparation       {cold['seconds']:8.1f} s   peak {cold['peak_mib']:8.0f} MiB   "
          f"({cold['seconds'] / cold['interactions'] * 1e6:.2f} s per M interactions)")
    row = dict(cold, warm={})
    for world in ranks:
        port = free_port()
        results = children(WARM, [(folder, name, cache, r, world, port) for r in range(world)])
        row["warm"][world] = results
        if world == 1:
            for label, p in results[0]["phases"].items():
                print(f"  warm, 1 rank: {label:<22} {p['seconds']:6.2f} s   RSS after {p['rss_mib']:8.0f} MiB"
                      f"   peak {p['peak_mib']:8.0f} MiB")
        print(f"  warm, {world} rank(s): summed peak {sum(r['peak_mib'] for r in results):8.0f} MiB, summed PSS "
              f"at the end {sum(r['pss_mib'] for r in results):8.0f} MiB")
    return row


def fit(rows: list[dict]) -> None:
    n = np.array([r["interactions"] for r in rows], dtype=float)
    peak = np.array([r["peak_mib"] for r in rows])
    secs = np.array([r["seconds"] for r in rows])
    if len(rows) < 2:
        return
    b, a = np.polyfit(n, peak, 1)
    p, logc = np.polyfit(np.log(n), np.log(secs), 1)
    print(f"\ncold peak MiB = {a:.0f} + {b * 1e6:.1f} per M interactions ({b * 2 ** 20:.1f} bytes each); "
          f"cold seconds = {np.exp(logc):.3g} * n^{p:.2f}")
    for label, size in TARGETS.items():
        print(f"  projected {label} ({size / 1e6:.1f}M): cold peak {a + b * size:,.0f} MiB "
              f"({(a + b * size) / 1024:.1f} GiB), cold preparation {np.exp(logc) * size ** p:,.0f} s")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", default="8M,32M,64M", help="comma-separated sizes (K/M suffixes)")
    p.add_argument("--items", type=int, default=400_000)
    p.add_argument("--folder", default="/tmp/pixelrec_scale", help="generated logs, caches and shared arrays")
    p.add_argument("--csv", help="measure this log instead of generated ones")
    p.add_argument("--ranks", default="1,2", help="warm measurements with these numbers of processes")
    args = p.parse_args()
    ranks = [int(r) for r in args.ranks.split(",") if r]
    if args.csv:
        csvs = [Path(args.csv).resolve()]
    else:
        from REC.data.synthetic import write_pixel_shaped_csv
        csvs = []
        for size in map(count, args.interactions.split(",")):
            csv = Path(args.folder) / f"Scale{size // 1_000_000}M.csv"
            if not csv.is_file():
                t = time.perf_counter()
                write_pixel_shaped_csv(csv, size, args.items, seed=0)
                print(f"wrote {csv} ({size:,} rows) in {time.perf_counter() - t:.0f} s")
            csvs.append(csv)
    rows = [measure(csv, ranks, Path(args.folder)) for csv in csvs]
    fit(rows)
    print(f"peak_rss_mib={max(rows, key=lambda r: r['interactions'])['peak_mib']:.0f}")


if __name__ == "__main__":
    main()
