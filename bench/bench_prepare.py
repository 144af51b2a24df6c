"""Data preparation at scale: parse, remap, sort and split a large CSV; print seconds and peak RSS.

    python -m bench.bench_prepare --interactions 8000000 [--folder /tmp/pixelrec_bench]

Makes a synthetic CSV of the requested size once (PixelRec format), then in a fresh child process times a cold
preparation (no cache), a warm one (cache hit), the leave-one-out split and the SEQ chunking, and reports the
child's peak RSS.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
from REC.data import leave_one_out, load_interactions, sequence_chunks
from REC.utils.memory import peak_rss_mib
folder, name = sys.argv[1], sys.argv[2]
shutil.rmtree(Path(folder) / ".pixelrec_cache", ignore_errors=True)
t = time.perf_counter(); inter = load_interactions(folder, name); cold = time.perf_counter() - t
t = time.perf_counter(); inter = load_interactions(folder, name); warm = time.perf_counter() - t
t = time.perf_counter(); split = leave_one_out(inter); t_split = time.perf_counter() - t
t = time.perf_counter(); chunks = sequence_chunks(split, 10); t_chunks = time.perf_counter() - t
print(json.dumps(dict(interactions=len(inter.items), users=inter.user_num - 1, items=inter.item_num - 1,
                      cold_prepare_s=cold, warm_prepare_s=warm, split_s=t_split, chunks_s=t_chunks,
                      n_chunks=len(chunks), peak_rss_mib=peak_rss_mib())))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", type=int, default=8_000_000)
    p.add_argument("--folder", default="/tmp/pixelrec_bench")
    args = p.parse_args()
    name = f"Synth{args.interactions // 1_000_000}M"
    csv = Path(args.folder) / f"{name}.csv"
    if not csv.is_file():
        from REC.data.synthetic import sequential_log, write_csv
        t = time.perf_counter()
        n_users = args.interactions // 17  # mean sequence length 17.5 with lengths 5..30
        frame = sequential_log(n_users=n_users, n_items=max(1000, args.interactions // 80), seed=0)
        write_csv(frame, csv)
        print(f"wrote {csv} ({len(frame):,} rows) in {time.perf_counter() - t:.1f}s")
    out = subprocess.run([sys.executable, "-c", CHILD, args.folder, name], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"interactions       {r['interactions']:,} ({r['users']:,} users, {r['items']:,} items)")
    print(f"cold prepare       {r['cold_prepare_s']:.1f} s   (parse, remap, sort, write cache)")
    print(f"warm prepare       {r['warm_prepare_s']:.1f} s   (cache hit)")
    print(f"split + chunks     {r['split_s']:.1f} s + {r['chunks_s']:.1f} s  ({r['n_chunks']:,} chunks)")
    print(f"peak RSS           {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
