"""ItemEncoder = backbone + readout + projection head, built from the ``encoder*`` config keys."""
from __future__ import annotations

import logging

import torch
from torch import nn

from REC.config import ConfigError

from .backbone import Backbone, set_trainable_blocks
from .head import projection_head
from .registry import get_encoder_spec, list_encoders
from .weights import Weights

log = logging.getLogger(__name__)


class ItemEncoder(nn.Module):
    """Cover images (already normalised, ``[n, 3, H, W]``) -> item vectors ``[n, out_dim]``."""

    def __init__(self, name: str, backbone: Backbone, head: nn.Module, readout: str, channels_last: bool):
        super().__init__()
        self.name, self.readout = name, readout
        self.backbone, self.head = backbone, head
        self.channels_last = bool(channels_last) and backbone.is_convolutional
        self._in_channels_last = False

    @property
    def input_size(self) -> int:
        return self.backbone.input_size

    @property
    def mean(self) -> tuple[float, float, float]:
        return self.backbone.mean

    @property
    def std(self) -> tuple[float, float, float]:
        return self.backbone.std

    @property
    def is_convolutional(self) -> bool:
        return self.backbone.is_convolutional

    @property
    def width(self) -> int:
        return self.backbone.width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.is_cuda:  # cuDNN's NHWC kernels; on CPU it is slower, so never there
            if not self._in_channels_last:
                self.backbone.to(memory_format=torch.channels_last)
                self._in_channels_last = True
            images = images.contiguous(memory_format=torch.channels_last)
        features = self.backbone(images)
        if self.backbone.per_token:  # the original's `mean`: head (activation included) per token, then average
            return self.head(features).mean(dim=1)
        return self.head(features)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, readout={self.readout!r}"


def _where(config, key: str) -> str:
    source = getattr(config, "source_of", None)
    return f"{source(key)}: key '{key}'" if source else f"key '{key}'"


def build_item_encoder(config, out_dim: int) -> ItemEncoder:
    """The item encoder named by ``config['encoder']`` with a head to ``out_dim``. Build it inside
    ``with torch.device('meta')`` for a free shape check: no weights are read there."""
    name = config["encoder"]
    if not name:
        raise ConfigError(f"{_where(config, 'encoder')}: this model needs an image encoder; known encoders: "
                          f"{list_encoders()}")
    try:
        spec = get_encoder_spec(name)
    except ConfigError as exc:
        raise type(exc)(f"{_where(config, 'encoder')}: {exc}") from None

    readout = config["encoder_readout"] or spec.default_readout
    if readout not in spec.readouts:
        raise ConfigError(f"{_where(config, 'encoder_readout')}: {name} supports readouts {list(spec.readouts)}, "
                          f"not {readout!r}")
    weights = Weights(bool(config["encoder_pretrained"]), config["encoder_weights"],
                      _where(config, "encoder_weights"))
    if config["encoder_weights"] and not weights.pretrained:
        log.warning("%s is set but encoder_pretrained is false: %s starts from random weights",
                    _where(config, "encoder_weights"), name)
    backbone = spec.build(readout, weights)

    blocks = config["encoder_trainable_blocks"]
    n = spec.trainable_blocks if blocks is None else int(blocks)
    set_trainable_blocks(backbone, n, name, _where(config, "encoder_trainable_blocks"))
    head = projection_head(backbone.width, list(config["encoder_head_layers"]), out_dim,
                           config["encoder_head_activation"], xavier=readout not in spec.default_init_readouts)
    encoder = ItemEncoder(name, backbone, head, readout, config["channels_last"])
    layout = backbone.block_layout()
    frozen = "everything trains" if n == -1 else f"the last {n} of {len(layout.units)} blocks train"
    log.info("item encoder %s (%s, %s readout, width %d; %s): %d of %d parameters trainable",
             name, spec.backbone, readout, backbone.width, frozen,
             encoder.trainable_parameters(), encoder.total_parameters())
    return encoder
