"""Low-rank adapters (LoRA, Hu et al. 2021) on an image encoder's blocks: ``adaptation: lora``.

Each adapted weight W (a Linear's ``[out, in]``, a convolution's ``[out, in, k, k]`` read as ``[out, in*k*k]``,
or a MultiheadAttention's packed ``in_proj_weight``) is used as ``W + (alpha / rank) * B @ A`` with ``A``
``[rank, in]`` and ``B`` ``[out, rank]``; W stays frozen, A and B train. ``B`` starts at zero, so an adapted encoder
starts as the pretrained one. The adapters are torch parametrizations: every library's own forward (open_clip's
attention, timm's convolutions) sees the adapted weight without being rewritten, and ``merge_adapters`` folds
them into the weights for inference (the same scores, no adapter cost).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

# what ``lora_targets`` adapts inside each chosen block
TARGETS = ("all", "attention")


class LowRankDelta(nn.Module):
    """The parametrization ``W -> W + scale * (B @ A).view_as(W)``."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_features, in_features = weight.shape[0], weight[0].numel()
        self.rank, self.scale = int(rank), float(alpha) / int(rank)
        self.A = nn.Parameter(torch.empty(self.rank, in_features, device=weight.device, dtype=weight.dtype))
        self.B = nn.Parameter(torch.zeros(out_features, self.rank, device=weight.device, dtype=weight.dtype))
        if weight.device.type != "meta":
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear's own weights

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (self.scale * (self.B @ self.A)).view_as(weight).to(weight.dtype)


def adapted_weights(block: nn.Module, targets: str) -> list[tuple[nn.Module, str]]:
    """(module, tensor name) of the weights ``targets`` adapts in ``block``: ``attention`` = the attention
    projections (MultiheadAttention's packed input projection and its output projection, or Linear layers named
    qkv / q / k / v / proj under an ``attn`` module); ``all`` = those and every other Linear and Conv2d."""
    found = []
    for name, module in block.named_modules():
        in_attention = any(part in ("attn", "attention", "self_attn") for part in name.split("."))
        if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            found.append((module, "in_proj_weight"))
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and not parametrize.is_parametrized(module):
            if targets == "all" or in_attention:
                found.append((module, "weight"))
    return found


def add_adapters(block: nn.Module, rank: int, alpha: float, targets: str) -> int:
    """Adapters on ``block``'s chosen weights (their base weights frozen); returns how many were added."""
    weights = adapted_weights(block, targets)
    for module, name in weights:
        getattr(module, name).requires_grad_(False)
        parametrize.register_parametrization(module, name, LowRankDelta(getattr(module, name), rank, alpha))
        getattr(module.parametrizations, name).original.requires_grad_(False)
    return len(weights)


@torch.no_grad()
def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter under ``model`` into its weight (``W + scale * B @ A``), removing the adapter; returns
    how many were merged. The merged model computes the same function without the adapters' extra matmuls."""
    merged = 0
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if any(isinstance(p, LowRankDelta) for p in module.parametrizations[name]):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    merged += 1
    return merged
