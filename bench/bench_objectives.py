"""The training objectives side by side: each model trained with the paper's loss and with the many-negative
ones (``loss: paper | softmax | sampled_softmax``) at the same epoch budget, one run after another; prints a
markdown table of valid and test Recall@10 / NDCG@10, s/epoch, peak RSS and candidates per target row.

    python -m bench.bench_objectives --data_path ../shared/data/Beauty --dataset Beauty --epochs 10 \\
        --models SASRec GRU4Rec --runs paper sampled_softmax \\
        "sampled_softmax:overall/sampled_softmax.yaml" "paper:--optim_args.learning_rate=1e-3"

A run is ``<loss>`` or ``<loss>:<extra>``, the extra being a config file layered last or an override; its
model's own files come first (IDNet/<model>.yaml overall/ID.yaml), so the paper's recipe is the baseline.
Results stay in each run directory under --output_dir.
"""
import argparse
import json
from pathlib import Path

from bench.main_runs import ROOT, run_main


def command(model: str, run: str, args) -> list[str]:
    loss, _, extra = run.partition(":")
    files = [f"IDNet/{model.lower()}.yaml", "overall/ID.yaml"]
    overrides = [f"--loss={loss}"]
    for part in filter(None, extra.split(",")):
        (overrides if part.startswith("--") else files).append(part)
    return ["--device", args.device, "--config_file", *files, f"--data_path={args.data_path}",
            f"--dataset={args.dataset}", f"--output_dir={args.output_dir}", "--show_progress=false",
            f"--epochs={args.epochs}", f"--stopping_step={args.stopping_step}", f"--precision={args.precision}",
            *overrides, *args.extra]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--stopping_step", type=int, default=30)
    p.add_argument("--models", nargs="+", default=["SASRec"])
    p.add_argument("--runs", nargs="+", default=["paper", "sampled_softmax:overall/sampled_softmax.yaml"])
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every run, e.g. --extra=--seed=1")
    p.add_argument("--output_dir", default=str(ROOT / "bench" / "out" / "objectives"))
    p.add_argument("--json", default=None, help="also write every result to this file")
    args = p.parse_args()
    print("| model | run | valid R@10 | valid N@10 | test R@10 | test N@10 | best epoch / run | s/epoch | "
          "peak RSS MiB | candidates per row |")
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for model in args.models:
        for run in args.runs:
            done = run_main(command(model, run, args), check=False)
            if done.run_dir is None:
                print(f"| {model} | {run} | error | | | | | | | |\n{(done.proc.stdout + done.proc.stderr)[-1500:]}",
                      flush=True)
                continue
            r = done.result
            rows.append({"model": model, "run": run, **r})
            v, t = r["best_valid"] or {}, r["test"]
            print(f"| {model} | {run} | {v.get('recall@10', float('nan')):.4f} | {v.get('ndcg@10', float('nan')):.4f} | "
                  f"{t['recall@10']:.4f} | {t['ndcg@10']:.4f} | {r['best_epoch'] + 1} / {r['epochs_run']} | "
                  f"{r['seconds_per_epoch']:.1f} | {r['peak_rss_mib']:,.0f} | {r['candidates_per_row']:.0f} |",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
