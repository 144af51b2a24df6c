"""LightGCN's training step against the size of its log: ``propagation: step`` (the whole graph forward and
backward at every step, the original) against ``propagation: epoch`` (layers 1..n_layers once per epoch without
gradients; a step then costs its batch), alone and with ``item_table_updates: sparse``, on one process.

    python -m bench.bench_lightgcn --interactions 1M,8M --items 400000 [--embedding 256 --layers 2 --batch 1024]

Each log is random (user, item) pairs, one user per 16.4 interactions as in Pixel8M, item popularity Zipf-like;
the model is built from IDNet/lightgcn.yaml + overall/ID.yaml (the published recipe: d 256, 2 layers, batch 1024)
and times ``--steps`` optimizer steps after one warm-up. For ``epoch`` the first step of an epoch (which
propagates) is printed apart from the median of the others. fp32.
"""
import argparse
import time

import numpy as np
import torch

from REC.app.configure import build_config
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.trainer.optim import build_optimizer
from REC.utils.batch_keys import ITEMS, NEGATIVES, USER_ID

from bench.bench_scale import count
from bench.main_runs import ROOT

MODES = {"step": ["--propagation=step"], "epoch": ["--propagation=epoch"],
         "epoch+sparse": ["--propagation=epoch", "--item_table_updates=sparse"]}


def log(interactions: int, items: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    users = rng.integers(1, max(2, round(interactions / 16.4)), size=interactions)
    popularity = 1.0 / np.arange(1, items) ** 0.8
    item_ids = rng.choice(np.arange(1, items), size=interactions, p=popularity / popularity.sum())
    return users, item_ids, int(users.max()) + 1


def seconds(mode: str, info: DatasetInfo, args) -> tuple[float, float, float]:
    """(model build s, first step of an epoch s, median of the later steps s)."""
    config = build_config([ROOT / "IDNet" / "lightgcn.yaml", ROOT / "overall" / "ID.yaml"],
                          [f"--embedding_size={args.embedding}", f"--n_layers={args.layers}",
                           f"--train_batch_size={args.batch}", *MODES[mode]])
    torch.manual_seed(0)
    t = time.perf_counter()
    model = create_model("LightGCN", config, info).train()
    built = time.perf_counter() - t
    optimizer = build_optimizer(model, config)
    rng = np.random.default_rng(1)

    def batch():
        rows = rng.integers(0, len(info.train_users), size=args.batch)
        return {USER_ID: torch.from_numpy(info.train_users[rows]), ITEMS: torch.from_numpy(info.train_items[rows]),
                NEGATIVES: torch.from_numpy(rng.integers(1, info.item_num, size=args.batch))}

    times = []
    for k in range(1 + args.steps):
        if k <= 1:
            model.train()  # the start of an epoch: propagation: epoch propagates at the next step
        b = batch()
        t = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(b).backward()
        optimizer.step()
        times.append(time.perf_counter() - t)
    return built, times[1], float(np.median(times[2:])) if len(times) > 2 else times[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interactions", default="1M,8M")
    p.add_argument("--items", type=int, default=400_000)
    p.add_argument("--embedding", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up (the first starts an epoch)")
    p.add_argument("--modes", default="step,epoch,epoch+sparse")
    args = p.parse_args()
    print(f"LightGCN, d {args.embedding}, {args.layers} layers, batch {args.batch}, {args.items:,} items, "
          f"{torch.get_num_threads()} threads, fp32")
    print("| interactions (users) | propagation | first step of an epoch | later steps (median) | steps per epoch |")
    print("|---|---|---|---|---|")
    for n in map(count, args.interactions.split(",")):
        users, items, user_num = log(n, args.items)
        info = DatasetInfo.from_pairs(args.items, user_num, users, items)
        for mode in args.modes.split(","):
            _, first, later = seconds(mode, info, args)
            per_epoch = -(-n // args.batch)
            print(f"| {n:,} ({user_num - 1:,}) | {mode} | {first:.3f} s | {later:.3f} s | {per_epoch:,} |",
                  flush=True)


if __name__ == "__main__":
    main()
