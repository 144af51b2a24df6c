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
- warm, N ranks: the same on N CPU ranks started by PixelRec's launcher as a training run's are (from its fork
  server) and joined in a gloo group (so what rank 0 builds for all, the training part and examples, is shared);
  the ranks' summed peaks and the whole job's PSS (launcher, fork server and ranks) while all are alive;
  ``--compare_spawn`` measures each again with spawned ranks, as every run started them before the fork server.

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
import json, sys
from bench.bench_scale import warm_run
print(json.dumps(warm_run(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])))
"""


def tree_pss_mib(root: int, ranks: set[int]) -> dict:
    """PSS of ``root`` (the launcher) and every process below it (Linux), summed and by kind: what a launched job
    holds, fork server and multiprocessing's helper processes included; ``ranks``: the ranks' process ids."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree, grew = tree | below, bool(below)
    kinds = {"launcher": 0.0, "ranks": 0.0, "fork server": 0.0, "other": 0.0}
    for pid in tree:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        pss = sum(int(line.split()[1]) for line in lines if line.startswith("Pss:")) / 1024
        kind = "ranks" if pid in ranks else "launcher" if pid == root else \
            "fork server" if b"forkserver" in command else "other"
        kinds[kind] += pss
    return dict(total=sum(kinds.values()), **kinds)


def warm_rank(folder: str, name: str, cache: str, launcher: int) -> dict:
    """One rank's warm phases, as a run's rank meets them: joined in a gloo group when launched (what one rank
    builds for all, the training part and examples, is shared); at the end, while every rank is still alive,
    rank 0 sums the PSS of the whole job below ``launcher``."""
    import os
    import torch.distributed as dist
    from REC.data import EvalBatches, leave_one_out, load_interactions
    from REC.data.node_shared import shared_split
    from REC.data.training.next_item import NextItemBatches
    from REC.utils.memory import peak_rss_mib, pss_mib, rss_mib
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    phases = {}

    def phase(label, fn):
        t = time.perf_counter()
        out = fn()
        phases[label] = dict(seconds=time.perf_counter() - t, rss_mib=rss_mib(), peak_mib=peak_rss_mib())
        return out

    inter = phase("cache read", lambda: load_interactions(folder, name, cache))
    config = {"MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 64, "seed": 0, "data_path": folder, "dataset": name,
              "cache_dir": cache}
    # as a run's ranks do (REC.data.prepare_split): rank 0 builds the split, the others map it
    split = phase("split", lambda: shared_split(config, lambda: leave_one_out(inter), inter))
    examples = phase("training examples", lambda: NextItemBatches(split, config, rank, world))
    phase("one training batch", lambda: next(iter(examples)))
    evals = EvalBatches(split.test, 50, 4096, rank, world)

    def first_batches(n=20):
        for _ in zip(range(n), evals):
            pass

    phase("20 evaluation batches", first_batches)
    pids = [os.getpid()] * world
    if world > 1:
        dist.all_gather_object(pids, os.getpid())
    job = tree_pss_mib(launcher, set(pids)) if rank == 0 else None
    result = dict(phases=phases, peak_mib=peak_rss_mib(), pss_mib=pss_mib(), job_pss_mib=job)
    peaks = [None] * world
    if world > 1:
        dist.all_gather_object(peaks, result["peak_mib"])
        dist.barrier()  # the others stay alive until rank 0 has measured them
        dist.destroy_process_group()
        result["peaks_mib"] = peaks
    else:
        result["peaks_mib"] = [result["peak_mib"]]
    return result


def warm_run(folder: str, name: str, cache: str, world: int, start: str) -> dict:
    """The warm phases on ``world`` CPU ranks, started by PixelRec's own launcher as a training run's are (``start``:
    ``launcher``, its choice, or ``spawn``, how every rank started before it used a fork server)."""
    import os
    from types import SimpleNamespace
    import REC.app.launch as launcher
    from REC.distributed import DeviceSpec
    if world == 1:
        return warm_rank(folder, name, cache, os.getpid())
    if start == "spawn":
        launcher.start_method = lambda spec: "spawn"
    args = SimpleNamespace(spec=DeviceSpec.parse(f"cpu:{world}"), nnodes=1, master_port=None, master_addr=None,
                           node_rank=0)
    return launcher.launch(warm_rank, (folder, name, cache, os.getpid()), args)


def child(code: str, *args) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def count(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * scale)


def measure(csv: Path, ranks: list[int], work: Path, compare_spawn: bool = False) -> dict:
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
        for start in (["launcher", "spawn"] if world > 1 and compare_spawn else ["launcher"]):
            result = child(WARM, folder, name, cache, world, start)
            row["warm"][f"{world}/{start}"] = result
            if world == 1:
                for label, p in result["phases"].items():
                    print(f"  warm, 1 rank: {label:<22} {p['seconds']:6.2f} s   RSS after {p['rss_mib']:8.0f} MiB"
                          f"   peak {p['peak_mib']:8.0f} MiB")
            how = "" if world == 1 else " (ranks spawned, as before the fork server)" if start == "spawn" else \
                " (the launcher's fork server)"
            job = result["job_pss_mib"]
            parts = ", ".join(f"{kind} {job[kind]:.0f}" for kind in ("launcher", "ranks", "fork server", "other")
                              if job[kind])
            print(f"  warm, {world} rank(s){how}: summed rank peaks {sum(result['peaks_mib']):8.0f} MiB, "
                  f"the whole job's PSS at the end {job['total']:8.0f} MiB ({parts})")
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
    p.add_argument("--compare_spawn", action="store_true",
                   help="measure every multi-rank case a second time with spawned ranks (as before the fork server)")
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
    rows = [measure(csv, ranks, Path(args.folder), args.compare_spawn) for csv in csvs]
    fit(rows)
    print(f"peak_rss_mib={max(rows, key=lambda r: r['interactions'])['peak_mib']:.0f}")


if __name__ == "__main__":
    main()
