"""Does ``torch.compile`` pay for PixelNet's trainable encoder part? Forward + backward of ``ItemEncoder.from_prefix``
(the blocks that train and the head), eager against compiled, on stored-prefix-shaped inputs.

    python -m bench.bench_compile --covers 128 --precisions fp32
    python -m bench.bench_compile --device cuda --covers 512 --precisions fp32,bf16

Default: CLIP ViT-B/32 (random weights), mean readout, the last 2 of 12 blocks trainable, head to 512, i.e. the
part that a step runs when ``encoder_cache`` stores the frozen blocks. Prints seconds per step, the first
(compiling) call and the speed-up.
"""
from __future__ import annotations

import argparse
import time

import torch


from REC.utils.precision import autocast
from REC.model.encoders import build_item_encoder


def encoder(args):
    config = dict(encoder=args.encoder, encoder_pretrained=False, encoder_weights=None, encoder_readout=args.readout,
                  encoder_trainable_blocks=args.trainable_blocks, encoder_head_layers=[],
                  encoder_head_activation="relu", channels_last=False, encoder_grad_checkpointing=False)
    torch.manual_seed(0)
    enc = build_item_encoder(config, args.out_dim).to(args.device).train()
    if enc.frozen_units is None:
        raise SystemExit(f"{args.encoder} with {args.trainable_blocks} trainable blocks has no frozen prefix")
    return enc


def time_steps(fn, x, device, precision: str, reps: int) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds = []
    for _ in range(reps + 1):
        sync()
        t0 = time.perf_counter()
        with autocast(device, precision):
            y = fn(x)
        y.float().sum().backward()
        sync()
        seconds.append(time.perf_counter() - t0)
    return seconds[0], min(seconds[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--encoder", default="clip_vit_b32")
    p.add_argument("--readout", default="mean")
    p.add_argument("--trainable_blocks", type=int, default=2)
    p.add_argument("--out_dim", type=int, default=512)
    p.add_argument("--covers", type=int, default=128, help="distinct covers per step")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--precisions", default="fp32")
    args = p.parse_args()
    device = torch.device(args.device)
    enc = encoder(args)
    with torch.no_grad():
        shape = enc.prefix(torch.zeros(1, 3, enc.input_size, enc.input_size, device=device)).shape[1:]
    x = torch.randn(args.covers, *shape, device=device)
    for precision in args.precisions.split(","):
        _, eager = time_steps(enc.from_prefix, x, device, precision, args.reps)
        first, compiled = time_steps(torch.compile(enc.from_prefix), x, device, precision, args.reps)
        print(f"{precision}: eager {eager:.2f} s per step of {args.covers} covers; compiled {compiled:.2f} s "
              f"(first call {first:.1f} s); speed-up {eager / compiled:.2f}x", flush=True)
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
