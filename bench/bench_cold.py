"""Cold-start figures: the cold_items protocol where covers carry the signal, and popularity buckets on Beauty.

    python -m bench.bench_cold                      # CPU, about 10 minutes on 2 cores
    python -m bench.bench_cold --skip_beauty --epochs 4

1. cold_items: a synthetic log (``visual_log``: each user favours one visual group, and a cover shows its item's
   group by colour and stripes) run with ``cold_item_ratio: 0.2``. A fifth of the items never occur in training;
   valid and test measure the users whose target is one of them, ranking over all items. Test Recall@10 and
   NDCG@10 of Pop, IDNet SASRec, PixelNet SASRec (a tiny random-init CNN, ``timm/test_resnet``, trained end to
   end) and ViNet VBPR on frozen cover features (each cover shrunk to 4x4 RGB, 48 numbers standardised: the
   pixels of the same covers, no learned extractor), after the same number of epochs.
2. Popularity buckets: IDNet SASRec on ../shared/data/Beauty (standard protocol, a small fast recipe, a few
   epochs), test figures per bucket of target popularity (training occurrences of the target item).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from REC.data import load_interactions
from REC.data.cover_pack import pack_covers
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from bench.main_runs import ROOT, run_main


def run(args_list: list[str]) -> dict:
    t0 = time.time()
    result = run_main(args_list).result
    result["wall_s"] = time.time() - t0
    return result


def make_data(folder: Path, args) -> None:
    """Vis.csv, its covers (folder/cover, folder/covers.lmdb) and cover features (folder/thumbs.npy)."""
    frame, groups = visual_log(n_users=args.users, n_items=args.items, n_groups=args.groups, n_cold=0, min_len=5,
                               max_len=20, p_group=0.8, seed=11)
    write_csv(frame, folder / "Vis.csv")
    covers = group_covers(groups, size=args.cover, seed=11)
    write_covers(covers, folder / "cover")
    report = pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=args.cover)
    assert report.ok, report.summary()
    tokens = load_interactions(str(folder), "Vis").item_tokens.to_list()
    thumbs = np.stack([np.asarray(Image.fromarray(covers[t]).resize((4, 4), Image.BOX), np.float32).ravel()
                       for t in tokens[1:]])
    thumbs = (thumbs - thumbs.mean(0)) / (thumbs.std(0) + 1e-6)
    np.save(folder / "thumbs.npy", np.concatenate([np.zeros((1, thumbs.shape[1]), np.float32), thumbs]))


def cold(folder: Path, args, out: Path) -> dict:
    common = [f"--data_path={folder}", "--dataset=Vis", f"--output_dir={out}", "--show_progress=false",
              f"--epochs={args.epochs}", "--stopping_step=100", f"--cold_item_ratio={args.ratio}"]
    small = ["--embedding_size=64", "--n_heads=2", "--n_layers=1"]
    encoder = ["--encoder=timm/test_resnet", "--encoder_pretrained=false", f"--image_size={args.cover}",
               "--encoder_readout=pool", "--encoder_trainable_blocks=-1", "--num_workers=0"]
    runs = {
        "Pop": ["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", *common],
        "IDNet SASRec": ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", *common, *small,
                         "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}"],
        "PixelNet SASRec": ["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", *common, *small, *encoder,
                            "--train_batch_size=64", "--optim_args.modal_lr=2e-3", "--optim_args.rec_lr=1e-3"],
        "ViNet VBPR": ["--config_file", "ViNet/vbpr.yaml", "overall/ID.yaml", *common, "--embedding_size=64",
                       f"--v_feat_path={folder / 'thumbs.npy'}", "--v_feat_dim=48",
                       "--optim_args={learning_rate: 1.0e-2, weight_decay: 0}"],
    }
    return {name: run(argv) for name, argv in runs.items()}


def beauty(args, out: Path) -> dict:
    return run(["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", f"--data_path={args.beauty}",
                "--dataset=Beauty", f"--output_dir={out}", "--show_progress=false", f"--epochs={args.beauty_epochs}",
                "--embedding_size=64", "--n_heads=2", "--n_layers=2", "--train_batch_size=256", "--precision=bf16",
                "--optim_args={learning_rate: 2.0e-3, weight_decay: 0.1}"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--items", type=int, default=800)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--cover", type=int, default=32, help="cover side in pixels (stored and encoded)")
    p.add_argument("--ratio", type=float, default=0.2, help="cold_item_ratio")
    p.add_argument("--epochs", type=int, default=6, help="epochs of every trained cold_items run")
    p.add_argument("--beauty", default=str(ROOT.parent / "shared" / "data" / "Beauty"))
    p.add_argument("--beauty_epochs", type=int, default=5)
    p.add_argument("--skip_cold", action="store_true")
    p.add_argument("--skip_beauty", action="store_true")
    args = p.parse_args()
    t_start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_cold:
            make_data(folder, args)
            results = cold(folder, args, folder / "runs")
            sizes = results["Pop"]["protocol"]["cold_items"]
            print(f"cold_items, ratio {args.ratio}: {sizes['items_held_out']} of {sizes['items_total']} items held "
                  f"out, {sizes['train_interactions_removed']:,} training interactions removed, "
                  f"{sizes['valid_users']} valid / {sizes['test_users']} test users; {args.epochs} epochs each; "
                  f"chance Recall@10 ~ {10 / sizes['items_total']:.4f}")
            print("| model | test Recall@10 | test NDCG@10 | best epoch | s/epoch | wall s |")
            print("|---|---|---|---|---|---|")
            for name, r in results.items():
                spe = f"{r['seconds_per_epoch']:.1f}" if r["seconds_per_epoch"] else "-"
                print(f"| {name} | {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} | {r['best_epoch']} | "
                      f"{spe} | {r['wall_s']:.0f} |")
        if not args.skip_beauty:
            r = beauty(args, folder / "beauty")
            print(f"\nIDNet SASRec on Beauty, {r['epochs_run']} epochs (d 64, 2 layers, batch 256, lr 2e-3, bf16; "
                  f"best epoch {r['best_epoch']}, {r['seconds_per_epoch']:.1f} s/epoch): test by target popularity")
            print("| training occurrences of the target | users | Recall@10 | NDCG@10 |")
            print("|---|---|---|---|")
            for name, b in r["test_buckets"].items():
                cells = " | ".join("-" if b[k] is None else f"{b[k]:.4f}" for k in ("recall@10", "ndcg@10"))
                print(f"| {name} | {b['users']:,} | {cells} |")
            n = sum(b["users"] for b in r["test_buckets"].values())
            print(f"| all | {n:,} | {r['test']['recall@10']:.4f} | {r['test']['ndcg@10']:.4f} |")
    print(f"\nbench time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
