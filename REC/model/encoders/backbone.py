"""What every encoder backbone offers, and partial freezing by blocks.

Freezing follows open_clip's "lock the tower, leave the last N groups unlocked": a backbone lists its blocks
in forward order, and ``encoder_trainable_blocks: N`` trains the last N blocks and whatever runs after them
(the final norm), freezing the stem and the earlier blocks. This replaces the original's ``tune_scale``, a
count of leading parameter tensors, which means something different for every library that
registers parameters in its own order; each shipped count is re-expressed in blocks beside its encoder.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from REC.config import ConfigError


@dataclass(frozen=True)
class BlockLayout:
    """Parameter-name prefixes of a backbone's parts, in forward order.

    ``units[i]`` is block i; a unit may own a module that runs between it and the next block (Swin's patch
    merging). ``locked`` parts stay frozen unless everything trains (the CLIP ResNets' attention pool).
    Every parameter of the backbone must fall in exactly one part, so a renamed module fails loudly instead of
    being frozen or trained by accident.
    """

    stem: tuple[str, ...]
    units: tuple[tuple[str, ...], ...]
    tail: tuple[str, ...] = ()
    locked: tuple[str, ...] = ()

    def part_of(self, param_name: str) -> int | None:
        """-1 for the stem, i for block i, len(units) for the tail, None for a locked part."""
        parts = [(-1, self.stem), *enumerate(self.units), (len(self.units), self.tail), (None, self.locked)]
        found = [i for i, prefixes in parts if any(_under(param_name, p) for p in prefixes)]
        if len(found) != 1:
            raise RuntimeError(f"parameter {param_name!r} falls in {len(found)} parts of the block layout "
                               f"(expected exactly one); the layout no longer matches the library's modules")
        return found[0]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@dataclass(frozen=True)
class Stages:
    """A backbone's forward cut into the pieces that freezing talks about: ``finish(units[-1](...units[0](stem(x))))``
    equals ``forward(x)``, with ``units[i]`` running block i of ``block_layout()`` (and what that unit owns).

    Cutting there lets a frozen prefix (the stem and the first blocks) run once per item instead of once per
    step (``REC.model.encoders.item_encoder``). ``stem_modules`` and ``units`` are what the prefix may contain, so
    what could make it non-deterministic in training mode can be looked for in them.

    ``state`` pools a unit's output to one vector per image (the class token, or the mean over positions) and
    ``widths`` gives its width after each unit: what ``adaptation: side`` stores per block. None where a backbone
    does not say (that rung then refuses it).
    """

    stem: Callable[[torch.Tensor], torch.Tensor]
    stem_modules: tuple[nn.Module, ...]
    units: Sequence[nn.Module]
    finish: Callable[[torch.Tensor], torch.Tensor]
    state: Callable[[torch.Tensor], torch.Tensor] | None = None
    widths: tuple[int, ...] | None = None


def mean_over_positions(x: torch.Tensor) -> torch.Tensor:
    """[n, C, H, W] -> [n, C]: a convolutional block's state, for ``adaptation: side``."""
    return x.mean(dim=(2, 3))


def class_token(x: torch.Tensor) -> torch.Tensor:
    """[n, tokens, width] -> [n, width]: a transformer block's state (token 0), for ``adaptation: side``."""
    return x[:, 0]


def channels_last_pays(device: torch.device) -> bool:
    """Where convolutions run faster in channels-last memory format: on CUDA (cuDNN's NHWC kernels), and on CPUs
    whose torch kernels use AVX-512 (oneDNN's blocked kernels; measured with ``python -m bench.bench_memory_format``:
    CLIP RN50 and ResNet-50 at 224 px, 21-29% less time per cover in evaluation and in training). Elsewhere it
    stays off, as it always was on CPU: an earlier measurement on another CPU found it slower. The one rule that
    the item encoders and the feature extractor follow for ``channels_last: true``."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX512"


def training_randomness(modules) -> list[str]:
    """Why these modules' output in training mode is not a function of each input alone: BatchNorm normalises
    with the batch's statistics (and updates its running ones), dropout and stochastic depth draw at random.
    Empty when the output is deterministic, so computing it once per item changes nothing."""
    found: dict[str, float] = {}
    for root in modules:
        for m in root.modules():
            if isinstance(m, _BatchNorm):
                kind, p = f"{type(m).__name__} (batch statistics)", 1.0
            elif isinstance(m, nn.modules.dropout._DropoutNd):
                kind, p = f"{type(m).__name__}", float(m.p)
            elif hasattr(m, "drop_prob"):  # timm DropPath: stochastic depth
                kind, p = f"{type(m).__name__} (stochastic depth)", float(m.drop_prob or 0)
            elif type(m).__name__ == "PatchDropout":  # open_clip
                kind, p = "PatchDropout", float(getattr(m, "prob", 0) or 0)
            else:
                continue
            if p > 0:
                found[kind] = max(p, found.get(kind, 0.0))
    return [k if "batch statistics" in k else f"{k} p up to {p:.3g}" for k, p in sorted(found.items())]


class NoFeatureMapError(ValueError):
    """The backbone gives only its pooled readout, no feature map to attend over; the message says what it gave."""


class Backbone(nn.Module):
    """A library image model reduced to one readout.

    ``forward(images)`` gives ``[n, width]``, or ``[n, tokens, width]`` when ``per_token`` is set (the head is
    then applied to every token and the results averaged, the original's ``mean`` readout). The library module
    is ``self.net``; ``block_layout()`` names its parts, or returns None when it cannot be partly frozen.

    Frozen features (``REC.app.extract``) read a backbone without a head: ``pooled`` for one vector per image,
    ``feature_map`` for the regions before pooling where ``has_feature_map`` says there are any. They are the
    backbone's own methods so that whoever reads them needs to know no backbone class.
    """

    per_token = False
    has_feature_map = False

    def __init__(self, net: nn.Module, *, width: int, input_size: int, mean, std, is_convolutional: bool):
        super().__init__()
        self.net = net
        self.width, self.input_size, self.is_convolutional = int(width), int(input_size), bool(is_convolutional)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def block_layout(self) -> BlockLayout | None:
        return None

    def refuse_size(self, side: int) -> str | None:
        """None when covers resized to ``side`` px fit the backbone; else which sides it takes and why, for the
        error that refuses ``image_size`` before a run starts (a forward at the wrong side fails deep inside the
        library with a shape error). The default: any side (convolutions and a global pool)."""
        return None

    def stages(self) -> Stages | None:
        """The forward cut at the block layout's units (``Stages``), or None when it cannot be cut. A plain object,
        not a module, so whoever keeps it does not register the backbone's modules a second time."""
        return None

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, width]``: the readout as a head would receive it. The ``mean`` readout gives every token to the
        head and averages the results; with no head in between, that is the average of the tokens."""
        out = self(images)
        return out.mean(dim=1) if self.per_token else out

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last feature map before any pooling: ``[n, H, W, D]`` (CNNs, Swin) or the patch tokens ``[n, R, D]``
        without class or other prefix tokens (ViT, BEiT). Raises ``NoFeatureMapError`` where there is none."""
        raise NoFeatureMapError(f"its backbone ({type(self).__name__}) gives no feature map, only its pooled readout")


def set_trainable_blocks(backbone: Backbone, n: int, encoder: str, key: str = "key 'encoder_trainable_blocks'") -> None:
    """Train the last ``n`` blocks and what follows them; -1 trains everything. Frozen parameters get
    ``requires_grad=False``. BatchNorm running statistics still update in train mode, as in the original."""
    layout = backbone.block_layout()
    if n == -1:
        for p in backbone.net.parameters():
            p.requires_grad_(True)
        return
    if layout is None:
        raise ConfigError(f"{key}: {n} is not possible for {encoder}: it has no block layout, so only -1 or null "
                         f"(train everything) is allowed")
    total = len(layout.units)
    if n < 0 or n > total:
        raise ConfigError(f"{key}: {n} is out of range for {encoder}, which has {total} blocks; use 0..{total}, "
                         f"or -1 to train everything")
    first = total - n
    for name, p in backbone.net.named_parameters():
        part = layout.part_of(name)
        p.requires_grad_(part is not None and part >= first)
