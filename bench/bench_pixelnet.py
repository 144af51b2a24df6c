"""PixelNet figures: training throughput, evaluation cost, the frozen-prefix store, and cold items.

    python -m bench.bench_pixelnet                      # CPU, a small encoder on 64 px covers
    # the paper's main setting on a CPU: CLIP ViT-B/32 (random init), mean readout, last 2 of 12 blocks train
    python -m bench.bench_pixelnet --encoder clip_vit_b32 --readout mean --trainable_blocks 2 --cover 224 \
        --users 1500 --items 800 --cold 0 --embedding 512 --batch 16 --workers 2 --steps 6 --warmup 1 --skip_cold
    python -m bench.bench_pixelnet --device cuda --encoder clip_vit_b32 --readout mean --trainable_blocks 2 \
        --cover 224 --batch 64 --skip_cold

Speed: MOSASRec training steps (batches of ``--batch`` chunks of M+1 items, their negatives and covers read from
a real LMDB) for every ``--precisions`` x ``--encoder_cache`` setting, each in a fresh process (so its peak RSS is
its own): sequences and distinct covers per second, seconds per 1,000 items of evaluation (every item encoded
once), the store's build time and size (``encoder_cache on``), and where a step's time goes.
Cold items: a synthetic log where every user's test item is one that never occurs in training (it shares a
visual group with the user's favourites, shown by its cover); test Recall@10 / NDCG@10 of Pop, IDNet SASRec and
PixelNet SASRec after the same number of epochs, against chance.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from REC.data import build_train_batches, leave_one_out, load_interactions
from REC.data.cover_batches import BatchesWithCovers, ItemCoverBatches
from REC.data.cover_pack import pack_covers
from REC.data.covers import CoverStore
from REC.data.item_array import human_bytes
from REC.data.prefix_cache import PrefixCache
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from REC.app.prefix_store import describe_store, fill_store, prefix_shape, store_dtype
from bench.main_runs import ROOT, run_main
from REC.utils.precision import autocast
from REC.model import create_model
from REC.model.base import DatasetInfo
from REC.app.configure import build_config


def make_data(folder: Path, args) -> None:
    frame, groups = visual_log(n_users=args.users, n_items=args.items, n_groups=args.groups, n_cold=args.cold,
                               min_len=5, max_len=20, p_group=0.8, cold_fraction=1.0, seed=11)
    write_csv(frame, folder / "Vis.csv")
    write_covers(group_covers(groups, size=args.cover, seed=11), folder / "cover")
    report = pack_covers(folder / "Vis.csv", folder / "cover", folder / "covers.lmdb", size=args.cover)
    assert report.ok, report.summary()


def encoder_args(args) -> list[str]:
    return [f"--encoder={args.encoder}", f"--encoder_pretrained={args.pretrained}", f"--image_size={args.image_size or args.cover}",
            f"--encoder_readout={args.readout}", f"--encoder_trainable_blocks={args.trainable_blocks}"]


class PhaseClock:
    """Seconds spent in named phases of a step; on CUDA each boundary synchronises (a bench, not training)."""

    def __init__(self, device: torch.device):
        self.seconds = defaultdict(float)
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def wrap(self, fn, phase: str):
        def timed(*a, **k):
            self.sync()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            self.sync()
            self.seconds[phase] += time.perf_counter() - t0
            return out
        return timed

    def shares(self, total: float) -> dict[str, float]:
        return {k: round(v / total, 3) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


def speed(folder: Path, args, precision: str, cache: str, adaptation: str = "blocks") -> dict:
    cfg = build_config(["PixelNet/sasrec.yaml", "overall/ViT.yaml"],
                       [f"--data_path={folder}", "--dataset=Vis", f"--train_batch_size={args.batch}",
                        f"--precision={precision}", f"--embedding_size={args.embedding}", f"--encoder_cache={cache}",
                        f"--encoder_cache_dir={folder / 'prefix'}", f"--cover_batch_size={args.cover_batch}",
                        f"--encoder_grad_checkpointing={args.grad_checkpointing}", f"--adaptation={adaptation}",
                        *encoder_args(args)])
    inter = load_interactions(str(folder), "Vis")
    split = leave_one_out(inter)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model("MOSASRec", cfg, DatasetInfo.from_split(split)).to(device)
    items = model.cover_items_module
    store = CoverStore(folder / "covers.lmdb", inter.item_tokens)
    out = {"adaptation": adaptation, "precision": precision, "encoder_cache": cache}
    prefix = None
    if cache == "on":
        plan = items.prefix_plan("on")
        if not plan.use:
            raise SystemExit(f"encoder_cache on is not possible here: {plan.reason}")
        prefix = PrefixCache(folder / "prefix", "Vis", describe_store(cfg, items, inter), split.item_num,
                             prefix_shape(items, device), store_dtype(cfg), args.cover_batch)
        t0 = time.perf_counter()
        fill_store(prefix, items, store, device, precision, False, args.workers)
        out.update(cache_build_s=round(time.perf_counter() - t0, 1), cache_size=human_bytes(prefix.nbytes),
                   cache_bytes_per_item=prefix.row_bytes)
    batches = BatchesWithCovers(build_train_batches("NEXT_ITEM", split, cfg), store, split.item_num, prefix=prefix)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=args.workers,
                                         pin_memory=device.type == "cuda")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    clock = PhaseClock(device)
    backbone_calls = []
    hook = items.visual_encoder.backbone.net.register_forward_hook(lambda *a: backbone_calls.append(1))
    enc = items.visual_encoder
    if enc.frozen_units is not None:
        enc.prefix = clock.wrap(enc.prefix, "encoder forward, frozen prefix")
        enc.from_prefix = clock.wrap(enc.from_prefix, "encoder forward, trainable part")
    else:
        enc.forward = clock.wrap(enc.forward, "encoder forward, whole")
    step_fns = {"model forward (all)": lambda b: model(b), "backward": lambda loss: loss.backward(),
                "optimizer": lambda: opt.step()}
    forward, backward, optim = (clock.wrap(f, k) for k, f in step_fns.items())
    seqs = covers = 0
    model.train()
    it = iter(loader)
    next_batch = clock.wrap(lambda: next(it), "loading (waiting for the loader)")
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            clock.sync()
            t0, seqs, covers = time.perf_counter(), 0, 0
            clock.seconds.clear()
        try:
            batch = next_batch()
        except StopIteration:
            it = iter(loader)
            batch = next_batch()
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = forward(batch)
        backward(loss)
        optim()
        seqs += len(batch["items"])
        covers += len(batch["cover_ids"])
    clock.sync()
    train_s = time.perf_counter() - t0
    hook.remove()
    out["encoder_forwards_in_training"] = len(backbone_calls)
    encoder = sum(v for k, v in clock.seconds.items() if k.startswith("encoder"))
    clock.seconds["model forward, recommender and lookups"] = clock.seconds.pop("model forward (all)") - encoder
    clock.seconds["other (batch to device, zero_grad)"] = train_s - sum(clock.seconds.values())
    shares = clock.shares(train_s)
    for name in ("prefix", "from_prefix", "forward"):  # evaluation is timed as a whole
        enc.__dict__.pop(name, None)

    model.eval()
    item_covers = ItemCoverBatches(store, split.item_num, args.cover_batch, prefix=prefix)
    loader = torch.utils.data.DataLoader(item_covers, batch_size=None, num_workers=args.workers)
    clock.sync()
    t0 = time.perf_counter()
    with torch.no_grad():
        for inputs in loader:
            with autocast(device, precision):
                model.encode_items({k: v.to(device, non_blocking=True) for k, v in inputs.items()})
    clock.sync()
    eval_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    out.update({"s_per_step": round(train_s / args.steps, 3), "sequences_per_s": round(seqs / train_s, 3), "covers_per_s": round(covers / train_s, 1),
                "distinct_covers_per_batch": round(covers / args.steps, 1),
                "eval_s_per_1k_items": round(eval_s / (split.item_num - 1) * 1e3, 2),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                **({"peak_cuda_mib": round(peak)} if peak is not None else {}),
                "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "step_shares": shares})
    return out


def run(args_list: list[str]) -> dict:
    return run_main(args_list).result


def rung_lr(spec: str, rung: str) -> str:
    """``--modal_lr`` for one rung: "2e-3" for every rung, or "2e-3,side=1e-4" (a default, then per-rung values)."""
    default, per_rung = None, {}
    for part in spec.split(","):
        name, _, value = part.rpartition("=")
        if name:
            per_rung[name] = value
        else:
            default = value
    return per_rung.get(rung, default)


def cold(folder: Path, args, out: Path) -> dict:
    common = [f"--data_path={folder}", "--dataset=Vis", f"--output_dir={out}", "--show_progress=false",
              f"--epochs={args.epochs}", "--stopping_step=100"]
    small = ["--embedding_size=64", "--n_heads=2", "--n_layers=1"]
    results = {
        "Pop": run(["--config_file", "IDNet/pop.yaml", "overall/ID.yaml", *common]),
        "IDNet SASRec": run(["--config_file", "IDNet/sasrec.yaml", "overall/ID.yaml", *common, *small,
                             "--optim_args={learning_rate: 1.0e-3, weight_decay: 0.1}"]),
        **{f"PixelNet SASRec, adaptation {a}": run(
            ["--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", *common, *small, *encoder_args(args),
             "--num_workers=0", "--train_batch_size=64", f"--optim_args.modal_lr={rung_lr(args.modal_lr, a)}", "--optim_args.rec_lr=1e-3",
             f"--adaptation={a}", f"--encoder_cache_dir={folder / 'prefix'}", *args.extra])
           for a in args.adaptation.split(",")},
    }
    return {name: {**r["test"], "valid": r["best_valid"], "best_epoch": r["best_epoch"],
                   "s_per_epoch": r["seconds_per_epoch"]} for name, r in results.items()}


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
    p.add_argument("--skip_speed", action="store_true")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--encoder_cache", default="off,on", help="settings to measure, among off and on")
    p.add_argument("--image_size", type=int, default=None, help="side the encoder sees (default: --cover)")
    p.add_argument("--embedding", type=int, default=512, help="embedding_size of the recommender")
    p.add_argument("--grad_checkpointing", default="false")
    p.add_argument("--modal_lr", default="2e-3", help="the image encoder's learning rate in the cold-items runs: one for every rung (2e-3), or a "
                        "default and per-rung values (2e-3,side=1e-4)")
    p.add_argument("--extra", nargs="*", default=[], help="further main.py arguments for the PixelNet cold-items runs")
    p.add_argument("--adaptation", default="blocks",
                   help="rungs of the adaptation ladder to measure, among blocks, frozen and side (these two with "
                        "the store only)")
    p.add_argument("--one", nargs=4, metavar=("FOLDER", "PRECISION", "CACHE", "ADAPTATION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # a child process: one setting, one JSON line
        print(json.dumps(speed(Path(args.one[0]), args, args.one[1], args.one[2], args.one[3])), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_data(folder, args)
        print(f"device {args.device}, encoder {args.encoder} at {args.cover} px, batch {args.batch} sequences, "
              f"{args.users} users, {args.items + args.cold} items", flush=True)
        for adaptation in [] if args.skip_speed else args.adaptation.split(","):
            for precision in args.precisions.split(","):
                for cache in args.encoder_cache.split(","):
                    if adaptation != "blocks" and cache == "off":
                        continue  # the frozen rungs are defined by their store
                    child = subprocess.run([sys.executable, "-m", "bench.bench_pixelnet", *sys.argv[1:], "--one",
                                            str(folder), precision, cache, adaptation], cwd=ROOT,
                                           capture_output=True, text=True)
                    if child.returncode:
                        raise SystemExit(child.stderr[-3000:])
                    print(child.stdout.strip().splitlines()[-1], flush=True)
        if not args.skip_cold:
            chance = 10 / (args.items + args.cold)
            print(f"cold items (every test item never seen in training); chance recall@10 ~ {chance:.4f}")
            for name, r in cold(folder, args, folder / "runs").items():
                valid = (r["valid"] or {}).get("recall@10", float("nan"))
                print(f"  {name:36s} valid recall@10 {valid:.4f}  test recall@10 {r['recall@10']:.4f}  "
                      f"ndcg@10 {r['ndcg@10']:.4f}  best epoch {r['best_epoch']}  s/epoch {r['s_per_epoch']}")


if __name__ == "__main__":
    main()
