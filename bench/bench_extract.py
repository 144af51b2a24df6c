"""Feature extraction speed (python -m REC features): covers encoded per second, fp32 and bf16.

    python -m bench.bench_extract [--items 300] [--device cpu] [--workers 0] [--rn50_batches 4]

Two encoders with random weights (encoder_pretrained: false; the speed does not depend on the weights):
timm's test_resnet on 32 px covers (the tests' encoder: the pipeline's overhead) and ResNet50 on 224 px covers
(the paper's RN50 features). Synthetic covers are packed into a raw LMDB first. The rate is measured over the
extraction loop (cover reading, normalisation, forward, copy into the memory-mapped file) after a one-batch
warm-up run, not the model build; ResNet50 stops after --rn50_batches batches of 32 (the rate is steady by then).
The 2-core CI machine is shared: rerun when it is idle (`uptime`) before quoting a figure.
"""
import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from REC.data.cover_pack import pack_covers
from REC.data.synthetic import group_covers, visual_log, write_covers, write_csv
from REC.app.extract import extract_features, feature_config


def make_data(folder: Path, n_items: int, size: int) -> Path:
    data = folder / f"covers{size}"
    frame, groups = visual_log(n_users=n_items, n_items=n_items, n_groups=8, min_len=5, max_len=10, seed=0)
    write_csv(frame, data / "Bench.csv")
    write_covers(group_covers(groups, size=size, seed=0), data / "cover")
    report = pack_covers(data / "Bench.csv", data / "cover", data / "covers.lmdb", size=size, workers=2)
    assert report.ok, report.summary()
    return data


def run(data: Path, encoder: str, size: int, precision: str, args, max_batches=None):
    config = feature_config(["overall/ResNet50.yaml"], [
        f"--data_path={data}", "--dataset=Bench", f"--encoder={encoder}", "--encoder_pretrained=false",
        f"--image_size={size}", "--show_progress=false"])
    out = data / f"{encoder.replace('/', '_')}-{precision}.npy"
    result = extract_features(config, out, device=args.device, batch_size=32, precision=precision,
                              workers=args.workers, max_batches=max_batches, restart=True, overwrite=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=300, help="synthetic items (covers) per dataset")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding covers")
    p.add_argument("--rn50_batches", type=int, default=4, help="batches of 32 ResNet50 covers to time (0 = all)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    threads = torch.get_num_threads()
    folder = Path(tempfile.mkdtemp(prefix="pixelrec-bench-extract-"))
    try:
        cases = [("timm/test_resnet", 32, None), ("resnet50", 224, args.rn50_batches or None)]
        rows = []
        for encoder, size, max_batches in cases:
            t0 = time.perf_counter()
            data = make_data(folder, args.items, size)
            print(f"# {args.items} covers of {size} px packed in {time.perf_counter() - t0:.1f} s", flush=True)
            for precision in ("fp32", "bf16"):
                run(data, encoder, size, precision, args, 1)  # warm-up: first-call kernel selection, page cache
                r = run(data, encoder, size, precision, args, max_batches)
                rows.append((encoder, size, precision, r.images, r.seconds, r.images_per_second))
                print(f"{encoder:>17} {size:>4} px {precision:>5}: {r.images:4d} covers in {r.seconds:6.2f} s = "
                      f"{r.images_per_second:8.1f} images/s", flush=True)
        print(f"\ndevice {args.device} ({threads} threads), batch 32, workers {args.workers}, torch {torch.__version__}")
        print("| encoder | input | precision | covers | seconds | images/s |\n|---|---|---|---|---|---|")
        for encoder, size, precision, n, s, rate in rows:
            print(f"| {encoder} | {size} px | {precision} | {n} | {s:.2f} | {rate:.1f} |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
