"""Cross-domain transfer: pre-train on domain A, fine-tune on a few-shot domain B, against training on B from scratch.

    python -m bench.bench_transfer                       # CPU: a tiny encoder on 24 px covers, a few minutes
    python -m bench.bench_transfer --device 0 --encoder clip_vit_b32 --pretrained true --cover 224 --readout cls

Two synthetic domains share a visual taste but no item and no user: each is a ``visual_log`` (users draw most of
their items from a favourite visual group) with its own seed, B's tokens renamed ``b<k>`` / ``v<k>``, and covers
from ``group_covers`` with the same group palette, so group g looks alike in both (colour and stripes; brightness,
a random patch and noise differ per item). B trains on a seeded 10% of its users (``train_user_ratio``); validation
and test cover all of B's users, the same users in every arm, ranking over all of B's items.

Arms on B, all with the same settings and epochs (the best validation epoch is tested):
- PixelNet SASRec from scratch;
- PixelNet SASRec initialised from its pre-training on A (``init_from``, encoder and backbone);
- IDNet SASRec from scratch and from A (backbone only: its item table cannot transfer), for reference.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from REC.data.cover_pack import pack_covers
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from bench.main_runs import run_main


def make_domain(folder: Path, name: str, item_prefix: str, user_prefix: str, seed: int, args) -> None:
    frame, groups = visual_log(n_users=args.users, n_items=args.items, n_groups=args.groups, min_len=5,
                               max_len=20, p_group=args.p_group, seed=seed)
    frame["item_id"] = item_prefix + frame["item_id"].str[1:]
    frame["user_id"] = user_prefix + frame["user_id"].str[1:]
    groups = {item_prefix + token[1:]: g for token, g in groups.items()}
    write_csv(frame, folder / f"{name}.csv")
    write_covers(group_covers(groups, size=args.cover, seed=seed), folder / "cover")
    report = pack_covers(folder / f"{name}.csv", folder / "cover", folder / "covers.lmdb", size=args.cover,
                         workers=1)
    assert report.ok, report.summary()



def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="timm/test_resnet")
    p.add_argument("--pretrained", default="false")
    p.add_argument("--readout", default="pool")
    p.add_argument("--cover", type=int, default=24, help="cover side in pixels (stored and encoded)")
    p.add_argument("--users", type=int, default=2000, help="users of each domain")
    p.add_argument("--items", type=int, default=400, help="items of each domain")
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--p_group", type=float, default=0.8, help="share of a user's items from the favourite group")
    p.add_argument("--ratio", type=float, default=0.1, help="train_user_ratio on B")
    p.add_argument("--epochs_a", type=int, default=6)
    p.add_argument("--epochs_b", type=int, default=8)
    p.add_argument("--skip_idnet", action="store_true")
    p.add_argument("--keep", help="folder to keep the data and runs in (default: a temporary one)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        t_start = time.perf_counter()
        make_domain(base / "A", "DomainA", "i", "u", 101, args)
        make_domain(base / "B", "DomainB", "b", "v", 202, args)
        common = [f"--output_dir={base / 'runs'}", "--show_progress=false", "--stopping_step=100",
                  "--embedding_size=64", "--n_heads=2", "--n_layers=1", "--train_batch_size=64",
                  f"--device={args.device}"]
        pixel = ["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", *common,
                 f"--encoder={args.encoder}", f"--encoder_pretrained={args.pretrained}", f"--image_size={args.cover}",
                 f"--encoder_readout={args.readout}", "--encoder_trainable_blocks=-1", "--num_workers=0",
                 "--optim_args.modal_lr=2e-3", "--optim_args.rec_lr=1e-3"]
        idnet = ["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", *common,
                 "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}"]
        on_a = [f"--data_path={base / 'A'}", "--dataset=DomainA", f"--epochs={args.epochs_a}"]
        on_b = [f"--data_path={base / 'B'}", "--dataset=DomainB", f"--epochs={args.epochs_b}",
                f"--train_user_ratio={args.ratio}"]

        results, arms = {}, [("PixelNet SASRec", pixel)] + ([] if args.skip_idnet else [("IDNet SASRec", idnet)])
        for name, recipe in arms:
            t0 = time.perf_counter()
            pre_run = run_main([*recipe, *on_a])
            pre, pre_dir = pre_run.result, pre_run.run_dir
            print(f"{name} pre-trained on A: test recall@10 {pre['test']['recall@10']:.4f} ndcg@10 "
                  f"{pre['test']['ndcg@10']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
            for arm, extra in (("from scratch on B", []), ("from A, fine-tuned on B", [f"--init_from={pre_dir}"])):
                t0 = time.perf_counter()
                run_dir = run_main([*recipe, *on_b, *extra]).run_dir
                r = json.loads((run_dir / "result.json").read_text())
                loaded = None
                if extra:
                    counts = json.loads((run_dir / "transfer_report.json").read_text())["counts"]
                    loaded = f"{counts['loaded']} tensors ({counts['loaded_values']:,} values)"
                results[f"{name}, {arm}"] = {**r["test"], "best_epoch": r["best_epoch"],
                                             "s_per_epoch": r["seconds_per_epoch"], "loaded": loaded,
                                             "wall_s": round(time.perf_counter() - t0, 1)}
                print(f"  {arm}: {json.dumps(results[f'{name}, {arm}'])}", flush=True)

        print(f"\nB: {args.users} users ({args.ratio:.0%} train), {args.items} items, {args.groups} visual groups; "
              f"chance recall@10 ~ {10 / args.items:.4f}; total {time.perf_counter() - t_start:.0f} s")
        print("| arm | test Recall@10 | test NDCG@10 | best epoch | s/epoch | loaded from A |")
        print("|---|---|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['recall@10']:.4f} | {r['ndcg@10']:.4f} | {r['best_epoch']} | "
                  f"{r['s_per_epoch']:.1f} | {r['loaded'] or '-'} |")


if __name__ == "__main__":
    main()
