"""An ID model's training step against the size of its catalogue: dense AdamW (the original) against
``item_table_updates: sparse`` (row-sparse gradient, lazy AdamW), on one process.

    python -m bench.bench_item_table --items 10000,400000 --embedding 512 --batch 64 [--model SASRec]

Each setting builds the model from its shipped config (IDNet/<model>.yaml + overall/ID.yaml) for a catalogue of
the given size, and times ``--steps`` optimizer steps (after ``--warmup``) on random sequences of
MAX_ITEM_LIST_LENGTH + 1 items with sampled negatives, as NEXT_ITEM batches are; prints seconds per step, and the
ratio of each catalogue's step to the smallest one's.
"""
import argparse
import time

import numpy as np
import torch

from REC.app.configure import build_config
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.trainer.optim import build_optimizer

from bench.main_runs import ROOT


def batch(rng, items: int, size: int, length: int) -> dict:
    seq = torch.from_numpy(rng.integers(1, items, size=(size, length + 1)))
    return {"items": seq, "negatives": torch.from_numpy(rng.integers(1, items, size=(size, length + 1))),
            "target_mask": torch.ones(size, length + 1, dtype=torch.bool)}


def step_seconds(model_name: str, items: int, updates: str, args) -> float:
    config = build_config([ROOT / "IDNet" / f"{model_name.lower()}.yaml", ROOT / "overall" / "ID.yaml"],
                          [f"--embedding_size={args.embedding}", f"--item_table_updates={updates}",
                           f"--MAX_ITEM_LIST_LENGTH={args.length}"])
    torch.manual_seed(0)
    model = create_model(model_name, config, DatasetInfo(items, 1000))
    optimizer = build_optimizer(model, config)
    rng = np.random.default_rng(0)
    batches = [batch(rng, items, args.batch, args.length) for _ in range(4)]
    times = []
    for k in range(args.warmup + args.steps):
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(batches[k % 4]).backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times[args.warmup:]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SASRec")
    p.add_argument("--items", default="10000,400000")
    p.add_argument("--embedding", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=10, help="MAX_ITEM_LIST_LENGTH (overall/ID.yaml's is 10)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--updates", default="dense,sparse")
    args = p.parse_args()
    sizes = [int(x) for x in args.items.split(",")]
    print(f"{args.model}, d {args.embedding}, batch {args.batch}, M {args.length}, {torch.get_num_threads()} threads, "
          f"fp32; median of {args.steps} steps")
    print("| item_table_updates | " + " | ".join(f"{n:,} items" for n in sizes) + " | largest / smallest |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for updates in args.updates.split(","):
        secs = [step_seconds(args.model, n, updates, args) for n in sizes]
        print(f"| {updates} | " + " | ".join(f"{s:.3f} s" for s in secs) + f" | {secs[-1] / secs[0]:.2f}x |")


if __name__ == "__main__":
    main()
