"""PixelNet figures: training throughput, evaluation cost per 10K items, and cold items that only covers reveal.

    python bench/bench_pixelnet.py                      # CPU, a small encoder on 64 px covers
    python bench/bench_pixelnet.py --device cuda --encoder clip_vit_b32 --cover 224 --batch 64 --skip_cold

Speed: MOSASRec training steps (batches of ``--batch`` chunks of M+1 items, their negatives and covers read from
a real LMDB) in fp32 and bf16, reported as sequences per second and covers encoded per second; evaluation
encodes every item's cover once, reported as seconds per 10,000 items.
Cold items: a synthetic log where every user's test item is one that never occurs in training (it shares a
visual group with the user's favourites, shown by its cover); test Recall@10 / NDCG@10 of Pop, IDNet SASRec and
PixelNet SASRec after the same number of epochs, against chance.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from REC.data import build_train_batches, leave_one_out, load_interactions  # noqa: E402
from REC.data.cover_batches import BatchesWithCovers, ItemCoverBatches  # noqa: E402
from REC.data.cover_pack import pack_covers  # noqa: E402
from REC.data.covers import CoverStore  # noqa: E402
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv  # noqa: E402
from main_runs import run_main  # noqa: E402  (bench/, the script's own folder)
from REC.evaluator.ranking import autocast  # noqa: E402
from REC.model import create_model  # noqa: E402
from REC.model.base import DatasetInfo  # noqa: E402
from REC.run import build_config  # noqa: E402


def make_data(folder: Path, args) -> None:
    frame, groups = visual_log(n_users=args.users, n_items=args.items, n_groups=args.groups, n_cold=args.cold,
                               min_len=5, max_len=20, p_group=0.8, cold_fraction=1.0, seed=11)
    write_csv(frame, folder / "Vis.csv")
    write_covers(group_covers(groups, size=args.cover, seed=11), folder / "cover")
    report = pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=args.cover)
    assert report.ok, report.summary()


def encoder_args(args) -> list[str]:
    return [f"--encoder={args.encoder}", f"--encoder_pretrained={args.pretrained}", f"--image_size={args.cover}",
            f"--encoder_readout={args.readout}", f"--encoder_trainable_blocks={args.trainable_blocks}"]


def speed(folder: Path, args, precision: str) -> dict:
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
                       [f"--data_path={folder}", "--dataset=Vis", f"--train_batch_size={args.batch}",
                        f"--precision={precision}", *encoder_args(args)])
    inter = load_interactions(str(folder), "Vis")
    split = leave_one_out(inter)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("MOSASRec", cfg, DatasetInfo.from_split(split)).to(device)
    store = CoverStore(folder / "covers.lmdb", inter.item_tokens)
    batches = BatchesWithCovers(build_train_batches("SEQ", split, cfg), store, split.item_num)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seqs = covers = 0
    model.train()
    for step, batch in enumerate(loader):
        if step == args.warmup:
            sync()
            t0, seqs, covers = time.perf_counter(), 0, 0
        if step == args.warmup + args.steps:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = model(batch)
        loss.backward()
        opt.step()
        seqs += len(batch["items"])
        covers += len(batch["cover_ids"])
    sync()
    train_s = time.perf_counter() - t0

    model.eval()
    item_covers = ItemCoverBatches(store, split.item_num, args.cover_batch)
    loader = torch.utils.data.DataLoader(item_covers, batch_size=None, num_workers=args.workers)
    sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for c in loader:
            with autocast(device, precision):
                model.encode_covers(c.to(device, non_blocking=True))
    sync()
    eval_s = time.perf_counter() - t0
    return {"precision": precision, "sequences_per_s": seqs / train_s, "covers_per_s": covers / train_s,
            "distinct_covers_per_batch": covers / args.steps, "eval_s_per_10k_items": eval_s / (split.item_num - 1) * 1e4,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def run(args_list: list[str]) -> dict:
    return run_main(args_list)[0]


def cold(folder: Path, args, out: Path) -> dict:
    common = [f"--data_path={folder}", "--dataset=Vis", f"--output_dir={out}", "--show_progress=false",
              f"--epochs={args.epochs}", "--stopping_step=100"]
    small = ["--embedding_size=64", "--n_heads=2", "--n_layers=1"]
    results = {
        "Pop": run(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", *common]),
        "IDNet SASRec": run(["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", *common, *small,
                             "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}"]),
        "PixelNet SASRec": run(["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", *common, *small,
                                *encoder_args(args), "--num_workers=0", "--train_batch_size=64",
                                "--optim_args.modal_lr=2e-3", "--optim_args.rec_lr=1e-3"]),
    }
    return {name: {**r["test"], "best_epoch": r["best_epoch"], "s_per_epoch": r["seconds_per_epoch"]}
            for name, r in results.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="timm/test_resnet")
    p.add_argument("--pretrained", default="false")
    p.add_argument("--readout", default="pool")
    p.add_argument("--trainable_blocks", default="-1")
    p.add_argument("--cover", type=int, default=64, help="cover side in pixels (stored and encoded)")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1600)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--cold", type=int, default=400, help="items that occur only as test targets")
    p.add_argument("--batch", type=int, default=64, help="training sequences per step")
    p.add_argument("--cover_batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--skip_cold", action="store_true")
    p.add_argument("--precisions", default="fp32,bf16")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, args)
        print(f"device {args.device}, encoder {args.encoder} at {args.cover} px, batch {args.batch} sequences")
        for precision in args.precisions.split(","):
            print(json.dumps(speed(folder, args, precision)))
        if not args.skip_cold:
            chance = 10 / (args.items + args.cold)
            print(f"cold items (every test item never seen in training); chance recall@10 ~ {chance:.4f}")
            for name, r in cold(folder, args, folder / "runs").items():
                print(f"  {name:16s} recall@10 {r['recall@10']:.4f}  ndcg@10 {r['ndcg@10']:.4f}  "
                      f"best epoch {r['best_epoch']}  s/epoch {r['s_per_epoch']}")


if __name__ == "__main__":
    main()
