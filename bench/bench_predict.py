"""Serving speed of REC.app.predict: users per second for top-k lists of every user, fp32 and bf16.

    python -m bench.bench_predict                                   # IDNet SASRec on ../shared/data/Beauty, CPU
    python -m bench.bench_predict --run_dir runs/SASRec-Beauty-...  # an existing run instead of a fresh one

Without ``--run_dir`` it first trains one epoch (bf16) into a temporary folder: the speed of predicting does not
depend on how well the model is trained. Each precision is timed in this process: loading the run (config,
cached data, checkpoint), then ranking every user from their whole history and writing the CSV, as
``python -m REC predict RUN_DIR`` does. The load average is printed: the figures mean little on a busy machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from REC.data import EvalBatches, leave_one_out
from REC.evaluator import FullRankingEvaluator
from REC.app.predict import Recommender, write_recommendations
from bench.main_runs import run_main


def train(data_path: str, dataset: str, out: Path) -> Path:
    cmd = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml",
           f"--data_path={data_path}", f"--dataset={dataset}", "--epochs=1", "--precision=bf16",
           "--show_progress=false", f"--output_dir={out}"]
    print("$ python main.py", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    run_dir = run_main(cmd).run_dir
    print(f"trained 1 epoch in {time.perf_counter() - t0:.0f} s", flush=True)
    return run_dir


def time_predict(run_dir: Path, precision: str, args, out: Path) -> dict:
    t0 = time.perf_counter()
    rec = Recommender.from_run(run_dir, device=args.device, precision=precision)
    users = rec.all_users()
    t1 = time.perf_counter()
    rec.items  # noqa: B018  (item table: part of the load, not of the per-user cost)
    t2 = time.perf_counter()
    rows = write_recommendations(out, rec.iter_user_rows(users, args.topk, True, args.batch_size))
    t3 = time.perf_counter()
    # reference: the evaluator ranking the test split (the same model calls, metrics instead of a CSV)
    test = leave_one_out(rec.inter).test
    evaluator = FullRankingEvaluator(["Recall"], [args.topk], 4, rec.device, precision)
    evaluator.evaluate(rec.model, EvalBatches(test, rec.max_len, args.batch_size))
    t4 = time.perf_counter()
    return dict(users=len(users), rows=rows, load_s=t1 - t0, items_s=t2 - t1, rank_s=t3 - t2,
                users_per_s=len(users) / (t3 - t2), eval_users_per_s=len(test) / (t4 - t3))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run_dir", help="an existing run directory (default: train SASRec for one epoch first)")
    p.add_argument("--data_path", default="../shared/data/Beauty", help="data folder for the training run")
    p.add_argument("--dataset", default="Beauty", help="dataset name for the training run")
    p.add_argument("--output_dir", help="keep the training run here (default: a temporary folder)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--topk", type=int, default=10, help="items per user")
    p.add_argument("--batch_size", type=int, default=1024, help="users per batch")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="autocast precisions to time")
    args = p.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir) if args.run_dir else train(args.data_path, args.dataset,
                                                                 Path(args.output_dir or tmp))
        for precision in args.precisions:
            r = time_predict(run_dir, precision, args, Path(tmp) / f"recs-{precision}.csv")
            print(f"{precision}: {r['users']:,} users, {r['rows']:,} rows; load {r['load_s']:.2f} s, item table "
                  f"{r['items_s']:.2f} s; "
                  f"rank + write {r['rank_s']:.2f} s = {r['users_per_s']:,.0f} users/s "
                  f"(evaluator on the test split: {r['eval_users_per_s']:,.0f} users/s)", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
