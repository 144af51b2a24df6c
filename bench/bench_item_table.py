"""An ID model's training step against the size of its catalogue: dense AdamW (the original) against
``item_table_updates: sparse`` (row-sparse gradient, lazy AdamW), on one process.

    python -m bench.bench_item_table --items 10000,400000 --embedding 512 --batch 64 [--model SASRec]
    python -m bench.bench_item_table --model MF --items 400000 --users 10000,1000000 --embedding 256 --batch 1024

Each setting builds the model from its shipped config (IDNet/<model>.yaml + overall/ID.yaml) for a catalogue of
the given size and ``--users`` users (MF's user table grows with them; LightGCN has bench_lightgcn), and times
``--steps`` optimizer steps (after ``--warmup``) on random batches shaped as the model's training batches are:
sequences of MAX_ITEM_LIST_LENGTH + 1 items with sampled negatives (NEXT_ITEM models), or (user, item, negative)
triples (PAIR models); prints seconds per step, and the ratio of the largest setting's step to the smallest one's.
"""
import argparse
import time

import numpy as np
import torch

from REC.app.configure import build_config
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.trainer.optim import build_optimizer
from REC.utils.batch_keys import ITEMS, NEGATIVES, TARGET_MASK, USER_ID

from bench.main_runs import ROOT


def batch(rng, input_type: str, items: int, users: int, size: int, length: int) -> dict:
    if input_type == "PAIR":
        return {USER_ID: torch.from_numpy(rng.integers(1, users, size=size)),
                ITEMS: torch.from_numpy(rng.integers(1, items, size=size)),
                NEGATIVES: torch.from_numpy(rng.integers(1, items, size=size))}
    seq = torch.from_numpy(rng.integers(1, items, size=(size, length + 1)))
    return {ITEMS: seq, NEGATIVES: torch.from_numpy(rng.integers(1, items, size=(size, length + 1))),
            TARGET_MASK: torch.ones(size, length + 1, dtype=torch.bool)}


def step_seconds(model_name: str, items: int, users: int, updates: str, args) -> float:
    config = build_config([ROOT / "IDNet" / f"{model_name.lower()}.yaml", ROOT / "overall" / "ID.yaml"],
                          [f"--embedding_size={args.embedding}", f"--item_table_updates={updates}",
                           f"--MAX_ITEM_LIST_LENGTH={args.length}"])
    torch.manual_seed(0)
    model = create_model(model_name, config, DatasetInfo(items, users))
    optimizer = build_optimizer(model, config)
    rng = np.random.default_rng(0)
    batches = [batch(rng, model.input_type, items, users, args.batch, args.length) for _ in range(4)]
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
    p.add_argument("--users", default="1000", help="user counts (the size of MF's user table)")
    p.add_argument("--updates", default="dense,sparse")
    args = p.parse_args()
    sizes = [(int(i), int(u)) for i in args.items.split(",") for u in args.users.split(",")]
    several_users = "," in args.users
    print(f"{args.model}, d {args.embedding}, batch {args.batch}, M {args.length}, {torch.get_num_threads()} threads, "
          f"fp32; median of {args.steps} steps")
    print("| item_table_updates | " + " | ".join(f"{i:,} items" + (f", {u:,} users" if several_users else "")
                                             for i, u in sizes) + " | largest / smallest |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for updates in args.updates.split(","):
        secs = [step_seconds(args.model, i, u, updates, args) for i, u in sizes]
        print(f"| {updates} | " + " | ".join(f"{s:.3f} s" for s in secs) + f" | {secs[-1] / secs[0]:.2f}x |")


if __name__ == "__main__":
    main()
