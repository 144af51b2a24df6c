"""``python -m REC encoders [OUT_DIM]``: the registered encoders with their shipped settings and sizes.

Each is built on the meta device (no memory, no weights read), with a head to OUT_DIM (default 512).
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import build_item_encoder, get_encoder_spec, list_encoders

COLUMNS = ("encoder", "backbone", "readout", "input", "width", "trainable blocks", "trainable params",
           "total params")


def encoder_rows(out_dim: int = 512) -> list[tuple[str, ...]]:
    rows = []
    for name in list_encoders():
        spec = get_encoder_spec(name)
        config = dict(encoder=name, encoder_pretrained=False, encoder_weights=None, encoder_readout=None,
                      encoder_trainable_blocks=None, encoder_head_layers=[], encoder_head_activation="relu",
                      channels_last=False, encoder_grad_checkpointing=False)
        with torch.device("meta"):
            enc = build_item_encoder(config, out_dim, shapes_only=True)
        layout = enc.backbone.block_layout()
        blocks = "all" if spec.trainable_blocks == -1 else str(spec.trainable_blocks)
        rows.append((name, spec.backbone, "/".join(spec.readouts), str(enc.input_size), str(enc.width),
                     f"{blocks}/{len(layout.units) if layout else '-'}", f"{enc.trainable_parameters():,}",
                     f"{enc.total_parameters():,}"))
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [COLUMNS, *rows]) for i in range(len(COLUMNS))]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m REC encoders", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("out_dim", nargs="?", type=int, default=512, help="the head's output width (default 512)")
    out_dim = p.parse_args(argv).out_dim
    if out_dim < 1:
        p.error(f"OUT_DIM {out_dim}: expected a positive width")
    print(format_table(encoder_rows(out_dim)))
    print(f"\nreadout: the first is the default (encoder_readout: null). Parameters include the head to {out_dim}. "
          f"Also: timm/<any timm model name> (timm's pooled features; everything trains).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
