"""The training objectives side by side: each model trained with the paper's loss and with the many-negative
ones (``loss: paper | softmax | sampled_softmax``) at the same epoch budget, one run after another; prints a
markdown table of valid and test Recall@10 / NDCG@10, s/epoch, peak RSS and candidates per target row.

    python -m bench.bench_objectives --data_path ../shared/data/Beauty --dataset Beauty --epochs 10 \\
        --models SASRec GRU4Rec --runs paper sampled_softmax \\
        "sampled_softmax:overall/sampled_softmax.yaml" "paper:--optim_args.learning_rate=1e-3"

A run is ``<loss>`` or ``<loss>:<extra>``, the extra being a config file layered last or an override; its
model's own files come first (IDNet/<model>.yaml overall/ID.yaml), so the paper's recipe is the baseline.
Results stay in each run directory under --output_dir.

PixelNet, on a synthetic visual log made here (``--pixelnet``; ``visual_log``: each user favours one visual group,
a cover shows its item's group), PixelNet SASRec with a small CNN trained end to end, ``paper`` against
``sampled_softmax``, on the standard split (all items) and under the cold_items protocol (targets that never
occur in training, ranked among all items)::

    python -m bench.bench_objectives --pixelnet --epochs 6 --runs paper "sampled_softmax:overall/sampled_softmax.yaml"
"""
import argparse
import json
import re
import tempfile
from pathlib import Path

from bench.main_runs import ROOT, run_main

PIXEL_SMALL = ["--embedding_size=64", "--n_heads=2", "--n_layers=1", "--encoder=timm/test_resnet",
               "--encoder_pretrained=false", "--encoder_readout=pool", "--encoder_trainable_blocks=-1",
               "--num_workers=0", "--train_batch_size=64", "--optim_args.modal_lr=2e-3", "--optim_args.rec_lr=1e-3"]


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


def pixel_command(run: str, args, folder: Path, protocol: list[str]) -> list[str]:
    loss, _, extra = run.partition(":")
    files = ["PixelNet/sasrec.yaml", "overall/ViT.yaml"]
    overrides = [f"--loss={loss}"]
    for part in filter(None, extra.split(",")):
        (overrides if part.startswith("--") else files).append(part)
    return ["--device", args.device, "--config_file", *files, f"--data_path={folder}", "--dataset=Vis",
            f"--output_dir={args.output_dir}", "--show_progress=false", f"--epochs={args.epochs}",
            f"--stopping_step={args.stopping_step}", f"--precision={args.precision}",
            f"--image_size={args.cover}", *PIXEL_SMALL, *protocol, *overrides, *args.extra]


def covers_per_step(log_text: str) -> str:
    m = re.search(r"a training step encodes the cover of each distinct item it names once: ([\d,]+) in the first "
                  r"batch(?: \(([\d,]+) named by the batch, ([\d,]+) more)?", log_text)
    if not m:
        return "?"
    return m.group(1) + (f" ({m.group(2)} + {m.group(3)})" if m.group(2) else "")


def pixelnet(args) -> list[dict]:
    from bench.bench_cold import make_data
    print(f"PixelNet SASRec on a synthetic visual log: {args.users} users, {args.items} items in {args.groups} "
          f"visual groups, {args.cover} px covers; timm/test_resnet (random init, trained end to end), d 64, "
          f"batch 64; {args.epochs} epochs\n")
    print("| protocol | run | valid R@10 | valid N@10 | test R@10 | test N@10 | best epoch / run | s/epoch | "
          "peak RSS MiB | candidates per row | covers per step (batch + shared) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, argparse.Namespace(users=args.users, items=args.items, groups=args.groups, cover=args.cover))
        for name, protocol in (("all items", []), (f"never-trained items (cold_item_ratio {args.ratio})",
                                                  [f"--cold_item_ratio={args.ratio}"])):
            for run in args.runs:
                done = run_main(pixel_command(run, args, folder, protocol), check=False)
                if done.run_dir is None:
                    print(f"| {name} | {run} | error |\n{(done.proc.stdout + done.proc.stderr)[-1500:]}", flush=True)
                    continue
                r = done.result
                rows.append({"protocol": name, "run": run, **r})
                v, t = r["best_valid"] or {}, r["test"]
                cand = r.get("candidates_per_row")
                print(f"| {name} | {run} | {v.get('recall@10', float('nan')):.4f} | "
                      f"{v.get('ndcg@10', float('nan')):.4f} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | "
                      f"{r['best_epoch'] + 1} / {r['epochs_run']} | {r['seconds_per_epoch']:.1f} | "
                      f"{r['peak_rss_mib']:,.0f} | {'-' if cand is None else f'{cand:.0f}'} | "
                      f"{covers_per_step(done.proc.stdout + done.proc.stderr)} |", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path")
    p.add_argument("--dataset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--stopping_step", type=int, default=30)
    p.add_argument("--models", nargs="+", default=["SASRec"])
    p.add_argument("--runs", nargs="+", default=["paper", "sampled_softmax:overall/sampled_softmax.yaml"])
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every run, e.g. --extra=--seed=1")
    p.add_argument("--output_dir", default=str(ROOT / "bench" / "out" / "objectives"))
    p.add_argument("--json", default=None, help="also write every result to this file")
    p.add_argument("--pixelnet", action="store_true", help="PixelNet SASRec on a synthetic visual log instead")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--cover", type=int, default=32)
    p.add_argument("--ratio", type=float, default=0.2, help="cold_item_ratio of the never-trained-items runs")
    args = p.parse_args()
    if args.pixelnet:
        rows = pixelnet(args)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return
    if args.data_path is None or args.dataset is None:
        p.error("--data_path and --dataset are required (or --pixelnet)")
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
