"""Convolutional encoders in the default (NCHW) and channels-last memory formats on this machine: milliseconds
per cover in evaluation (no gradient) and in training (forward and backward of everything), and the largest
difference between the two formats' outputs.

    python -m bench.bench_memory_format                       # clip_rn50 and resnet50 at 224 px
    python -m bench.bench_memory_format --encoders clip_rn50 --batch 100 --train_batch 32

``channels_last: true`` (the default) uses channels-last where ``channels_last_pays`` says it is faster: CUDA, and
CPUs whose torch kernels use AVX-512 (``torch.backends.cpu.get_cpu_capability()``, printed here).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from REC.model.encoders.backbone import channels_last_pays
from REC.model.encoders.item_encoder import build_item_encoder


def encoder(name: str, size: int, trainable: int):
    config = {"encoder": name, "encoder_readout": None, "encoder_pretrained": False, "encoder_weights": None,
              "encoder_head_layers": [], "encoder_head_activation": "relu", "channels_last": False,
              "encoder_grad_checkpointing": False, "encoder_trainable_blocks": trainable, "adaptation": "blocks",
              "image_size": size}
    return build_item_encoder(config, 512)


def per_cover_ms(fn, images: torch.Tensor, reps: int) -> float:
    fn(images[:4])  # warm-up: kernels chosen, buffers allocated
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(images)
    return (time.perf_counter() - t0) / (reps * len(images)) * 1e3


def measure(name: str, args) -> dict:
    torch.manual_seed(0)
    out = {"encoder": name}
    for mode, batch in (("eval", args.batch), ("train", args.train_batch)):
        model = encoder(name, args.size, -1)
        model.train(mode == "train")
        images = torch.randn(batch, 3, args.size, args.size)
        if mode == "eval":
            def step(x):
                with torch.no_grad():
                    return model(x)
        else:
            def step(x):
                model(x).sum().backward()
        reference = step(images) if mode == "eval" else None
        out[f"{mode}_ms_per_cover"] = round(per_cover_ms(step, images, args.reps), 1)
        model.backbone.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        out[f"{mode}_ms_per_cover_channels_last"] = round(per_cover_ms(step, images, args.reps), 1)
        if reference is not None:
            out["max_output_difference"] = float((step(images) - reference).abs().max())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", default="clip_rn50,resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=100, help="covers per evaluation call")
    p.add_argument("--train_batch", type=int, default=32, help="covers per training step")
    p.add_argument("--reps", type=int, default=2)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; channels_last_pays(cpu) = "
          f"{channels_last_pays(torch.device('cpu'))}", flush=True)
    for name in args.encoders.split(","):
        print(json.dumps(measure(name, args)), flush=True)


if __name__ == "__main__":
    main()
