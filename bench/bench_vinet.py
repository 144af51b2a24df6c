"""ViNet figures on a log whose covers carry the signal: features extracted from the covers by a frozen encoder,
then VisRank, VBPR and ACF beside Pop and IDNet SASRec (test Recall@10 / NDCG@10).

    python -m bench.bench_vinet [--encoder timm/test_resnet --cover 32 --epochs 8]

Pretrained weights cannot be downloaded here, so the stand-in for "an encoder pretrained elsewhere" is the tiny
timm/test_resnet trained for a few epochs to classify covers into their visual groups, saved to a local file and
loaded through ``encoder_weights`` as a user would load ImageNet weights (``--pretrain_epochs 0``: random weights,
whose features carry little of the signal). With real weights use e.g. --encoder resnet50 --cover 224
--pretrain_epochs 0 --weights /path/resnet50.safetensors.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from REC.data.cover_pack import pack_covers
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from bench.main_runs import ROOT, run_main


def main_py(args_list: list[str]) -> dict:
    return run_main(args_list).result


def pretrain_group_classifier(covers: dict, groups: dict, args, path: Path) -> None:
    """A supervised stand-in for pretrained weights: classify covers into visual groups, save the state dict."""
    import numpy as np
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(args.encoder.removeprefix("timm/"), pretrained=False, num_classes=args.groups)
    tokens = sorted(covers)
    x = torch.from_numpy(np.stack([covers[t] for t in tokens])).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.tensor([groups[t] for t in tokens])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(args.pretrain_epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"group classifier pretrained {args.pretrain_epochs} epochs: train accuracy {accuracy:.3f}")
    torch.save(model.state_dict(), path)


def extract(folder: Path, args, output: Path, spatial: bool, weights: Path | None) -> float:
    source = ["--encoder_pretrained=true", f"--encoder_weights={weights}"] if weights else ["--encoder_pretrained=false"]
    cmd = [sys.executable, "-m", "REC", "features", "--config_file", "overall/ResNet50.yaml",
           "--output", str(output), f"--data_path={folder}", "--dataset=Vis", f"--encoder={args.encoder}",
           *source, f"--image_size={args.cover}", "--encoder_readout=pool"]
    if spatial:
        cmd.append("--spatial")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoder", default="timm/test_resnet")
    p.add_argument("--pretrain_epochs", type=int, default=5, help="group-classifier epochs (0: random weights)")
    p.add_argument("--weights", help="a local weights file to extract with instead of pretraining")
    p.add_argument("--cover", type=int, default=32)
    p.add_argument("--users", type=int, default=1500)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        frame, groups = visual_log(n_users=args.users, n_items=args.items, n_groups=args.groups, min_len=5,
                                   max_len=20, p_group=0.8, seed=21)
        write_csv(frame, folder / "Vis.csv")
        covers = group_covers(groups, size=args.cover, seed=21)
        write_covers(covers, folder / "cover")
        weights = Path(args.weights) if args.weights else None
        if weights is None and args.pretrain_epochs > 0:
            weights = folder / "encoder.pth"
            pretrain_group_classifier(covers, groups, args, weights)
        assert pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=args.cover).ok
        pooled, spatial = folder / "pooled.npy", folder / "spatial.npy"
        n_items = frame["item_id"].nunique()
        seconds = extract(folder, args, pooled, False, weights)
        print(f"extraction ({args.encoder}, {args.cover} px, CPU, including start-up): {n_items} covers in "
              f"{seconds:.1f} s = {n_items / seconds:.0f} covers/s")
        extract(folder, args, spatial, True, weights)

        common = [f"--data_path={folder}", "--dataset=Vis", f"--output_dir={folder / 'runs'}",
                  "--show_progress=false", f"--epochs={args.epochs}", "--stopping_step=100"]
        feats = [f"--v_feat_path={pooled}", "--v_feat_dim=null"]
        fast = "--optim_args={modal_lr: 1.0e-3, modal_decay: 0.0, rec_lr: 1.0e-2, rec_decay: 0.0}"
        runs = {
            "Pop": ["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", *common],
            "IDNet SASRec": ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", *common,
                             "--embedding_size=64", "--n_heads=2", "--n_layers=1",
                             "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}"],
            "VisRank": ["--config_file", "ViNet/visrank.yaml", "overall/ID.yaml", *common, *feats],
            "VBPR": ["--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml", *common, *feats,
                     "--embedding_size=64", "--train_batch_size=256", fast],
            "ACF": ["--config_file", "ViNet/acf.yaml", "overall/ID.yaml", *common, f"--v_feat_path={spatial}",
                    "--v_feat_dim=null", "--embedding_size=64",
                    "--optim_args={learning_rate: 3.0e-3, weight_decay: 0.0}"],
        }
        print(f"{'model':14s} recall@10  ndcg@10  best epoch  s/epoch")
        for name, cmd in runs.items():
            r = main_py(cmd)
            print(f"{name:14s} {r['test']['recall@10']:.4f}    {r['test']['ndcg@10']:.4f}   {r['best_epoch']!s:>5}"
                  f"      {r['seconds_per_epoch'] or 0:.1f}")


if __name__ == "__main__":
    main()
