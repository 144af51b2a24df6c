"""ItemEncoder = backbone + readout + projection head, built from the ``encoder*`` config keys."""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from REC.config import ConfigError

from .backbone import Backbone, Stages, set_trainable_blocks, training_randomness
from .head import projection_head
from .registry import get_encoder_spec, list_encoders
from .weights import Weights

log = logging.getLogger(__name__)


class ItemEncoder(nn.Module):
    """Cover images (already normalised, ``[n, 3, H, W]``) -> item vectors ``[n, out_dim]``.

    Where the backbone can be cut at its blocks (``Backbone.stages``) and its stem and first blocks are frozen,
    the forward is ``from_prefix(prefix(images))``: the frozen prefix, then the trainable rest. A run may then
    compute ``prefix`` once per item and train from the stored output (``REC.data.prefix_cache``).
    ``frozen_units`` is how many blocks the prefix holds, None when nothing at the front is frozen.
    """

    def __init__(self, name: str, backbone: Backbone, head: nn.Module, readout: str, channels_last: bool,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.name, self.readout = name, readout
        self.backbone, self.head = backbone, head
        self.channels_last = bool(channels_last) and backbone.is_convolutional
        self._in_channels_last = False
        self.grad_checkpointing = bool(grad_checkpointing)
        self._stages = backbone.stages()  # a plain attribute: the modules stay registered once, under backbone
        self.frozen_units = self._count_frozen_units()
        if self.grad_checkpointing and self._stages is None and hasattr(backbone.net, "set_grad_checkpointing"):
            backbone.net.set_grad_checkpointing(True)  # timm's own, for encoders that cannot be cut here

    def _count_frozen_units(self) -> int | None:
        """Leading blocks with no trainable parameter, after a frozen stem; None when the stem trains."""
        st, layout = self._stages, self.backbone.block_layout()
        if st is None or layout is None:
            return None
        if any(p.requires_grad for name, p in self.backbone.net.named_parameters() if layout.part_of(name) == -1):
            return None
        n = 0
        while n < len(st.units) and not any(p.requires_grad for p in st.units[n].parameters()):
            n += 1
        return n

    def prefix_digest(self) -> str:
        """Hash of every parameter and buffer the frozen prefix reads (BatchNorm statistics included), so a
        stored prefix is never reused with other weights."""
        layout = self.backbone.block_layout()
        digest = hashlib.blake2b(digest_size=16)
        tensors = [*self.backbone.net.named_parameters(), *self.backbone.net.named_buffers()]
        for name, t in sorted(tensors, key=lambda kv: kv[0]):
            try:
                part = layout.part_of(name)
            except RuntimeError:  # a buffer outside the layout's parts (attention masks, index tables): include it
                part = -1
            if part is not None and part < self.frozen_units:
                digest.update(name.encode())
                digest.update(t.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
        return digest.hexdigest()

    @property
    def stages(self) -> Stages | None:
        return self._stages

    def prefix_randomness(self) -> list[str]:
        """What makes the frozen prefix's output in training mode depend on more than the item (empty: it is a
        function of the cover alone, and storing it changes nothing)."""
        st = self._stages
        return training_randomness([*st.stem_modules, *st.units[:self.frozen_units]])

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
        if self.frozen_units is not None:
            return self.from_prefix(self.prefix(images))
        features = self.backbone(self._layout_for_device(images))
        return self._read(features)

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen stem and first ``frozen_units`` blocks: what a prefix cache stores per item."""
        st = self._stages
        x = st.stem(self._layout_for_device(images))
        for unit in st.units[:self.frozen_units]:
            x = unit(x)
        return x

    def from_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The trainable rest: the remaining blocks (each recomputed in the backward pass instead of keeping its
        activations when ``grad_checkpointing`` is on), the readout and the head."""
        st = self._stages
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for unit in st.units[self.frozen_units:]:
            x = checkpoint(unit, x, use_reentrant=False) if recompute else unit(x)
        return self._read(st.finish(x))

    def _layout_for_device(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last and images.is_cuda:  # cuDNN's NHWC kernels; on CPU it is slower, so never there
            if not self._in_channels_last:
                self.backbone.to(memory_format=torch.channels_last)
                self._in_channels_last = True
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _read(self, features: torch.Tensor) -> torch.Tensor:
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


def _check_image_size(config, backbone: Backbone, name: str) -> None:
    """A cover side the backbone cannot take is a ConfigError here, while the model is built in preflight (on the
    meta device), not a shape error at its first forward, after the run directory is made."""
    side = config.get("image_size")  # absent from the plain dicts that build encoders alone
    why = None if side is None else backbone.refuse_size(int(side))
    if why:
        raise ConfigError(f"{_where(config, 'image_size')} = {side}; encoder {name}: {why}; set image_size to a "
                          f"side it takes, or null for its native {backbone.input_size} px")


def build_item_encoder(config, out_dim: int, shapes_only: bool = False) -> ItemEncoder:
    """The item encoder named by ``config['encoder']`` with a head to ``out_dim``. ``shapes_only``: a free shape
    check inside ``with torch.device('meta')``; no weights are read (a named weights file must still exist)."""
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
                      _where(config, "encoder_weights"), read=not shapes_only)
    if config["encoder_weights"] and not weights.pretrained:
        log.warning("%s is set but encoder_pretrained is false: %s starts from random weights",
                    _where(config, "encoder_weights"), name)
    backbone = spec.build(readout, weights)
    _check_image_size(config, backbone, name)

    blocks = config["encoder_trainable_blocks"]
    n = spec.trainable_blocks if blocks is None else int(blocks)
    set_trainable_blocks(backbone, n, name, _where(config, "encoder_trainable_blocks"))
    head = projection_head(backbone.width, list(config["encoder_head_layers"]), out_dim,
                           config["encoder_head_activation"], xavier=readout not in spec.default_init_readouts)
    encoder = ItemEncoder(name, backbone, head, readout, config["channels_last"], config["encoder_grad_checkpointing"])
    layout = backbone.block_layout()
    frozen = "everything trains" if n == -1 else f"the last {n} of {len(layout.units)} blocks train"
    log.info("item encoder %s (%s, %s readout, width %d; %s): %d of %d parameters trainable",
             name, spec.backbone, readout, backbone.width, frozen,
             encoder.trainable_parameters(), encoder.total_parameters())
    return encoder
