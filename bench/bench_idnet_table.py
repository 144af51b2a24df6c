"""The IDNet table: every IDNet model (and Pop) trained on one dataset with its shipped recipe
(IDNet/<model>.yaml + overall/ID.yaml), one after another; prints a markdown table.

    python -m bench.bench_idnet_table --data_path ../shared/data/Beauty --dataset Beauty \
        --epochs SASRec=30 MF=5 --default_epochs 10 --precision bf16

``--epochs`` caps the epochs of a model (a time budget on a CPU); early stopping still applies
(``--stopping_step``). Results of each run stay in its run directory under --output_dir.
"""
import argparse
import json
import time
from pathlib import Path

from bench.main_runs import ROOT, run_main

MODELS = ["Pop", "MF", "FM", "DSSM", "LightGCN", "SRGNN", "GRU4Rec", "BERT4Rec", "NextItNet", "SASRec", "LightSANs"]


def run(model, args, epochs):
    cmd = ["--device", args.device, "--config_file", f"IDNet/{model.lower()}.yaml", "overall/ID.yaml",
           f"--data_path={args.data_path}", f"--dataset={args.dataset}", f"--output_dir={args.output_dir}",
           "--show_progress=false", f"--epochs={epochs}", f"--stopping_step={args.stopping_step}"]
    if model != "Pop":
        cmd.append(f"--precision={args.precision}")
    t0 = time.time()
    done = run_main(cmd, check=False)
    if done.run_dir is None:
        return {"model": model, "error": (done.proc.stdout + done.proc.stderr)[-1500:]}
    result = done.result
    result["wall_s"] = time.time() - t0
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--epochs", nargs="*", default=[], metavar="MODEL=N")
    p.add_argument("--default_epochs", type=int, default=200)
    p.add_argument("--stopping_step", type=int, default=30)
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--output_dir", default=str(ROOT / "bench" / "out" / "idnet_table"))
    p.add_argument("--json", default=None, help="also write all results to this file")
    args = p.parse_args()
    caps = dict(item.split("=") for item in args.epochs)
    rows = []
    print("| model | test Recall@10 | test NDCG@10 | s/epoch | best epoch / run | parameters | wall s |")
    print("|---|---|---|---|---|---|---|")
    for model in args.models:
        r = run(model, args, int(caps.get(model, args.default_epochs)))
        rows.append(r)
        if "error" in r:
            print(f"| {model} | error | | | | | |\n{r['error']}", flush=True)
            continue
        spe = f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] else "-"
        print(f"| {model} | {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} | {spe} | "
              f"{r['best_epoch'] + 1} / {r['epochs_run']} | {r['trainable_parameters']:,} | {r['wall_s']:.0f} |",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
