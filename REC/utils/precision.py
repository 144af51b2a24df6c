"""Numeric precision of a run: the autocast region of forward passes (``precision``) and, on a GPU, whether fp32
matrix products use TF32 tensor cores (``tf32``)."""
from __future__ import annotations

import contextlib

import torch

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """The forward-pass context of ``precision``: nothing for fp32, else torch autocast to bf16 / fp16 (losses,
    optimizer and metrics stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def use_tf32(device: torch.device, enabled: bool) -> None:
    """Let fp32 matrix products and convolutions on CUDA use TF32 (Ampere and newer: a 10-bit mantissa at several
    times fp32's speed), or keep full fp32. PyTorch's default leaves matrix products in full fp32, so an fp32 run
    would not use the tensor cores at all. No effect on the CPU or on bf16/fp16 autocast regions."""
    if device.type != "cuda":
        return
    mode = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
