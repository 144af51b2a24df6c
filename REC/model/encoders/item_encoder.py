"""ItemEncoder = backbone + readout + projection head, built from the ``encoder*`` config keys."""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from REC.config import ConfigError

from .backbone import Backbone, Stages, channels_last_pays, set_trainable_blocks, training_randomness
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

    adaptation = "blocks"  # the rung of the adaptation ladder (``ADAPTATIONS``); the subclasses below are the others

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
        digest = hashlib.blake2b(digest_size=16)
        tensors = [*self.backbone.net.named_parameters(), *self.backbone.net.named_buffers()]
        for name, t in sorted(tensors, key=lambda kv: kv[0]):
            if self._in_prefix(name):
                digest.update(name.encode())
                digest.update(t.detach().to("cpu").reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
        return digest.hexdigest()

    def _in_prefix(self, name: str) -> bool:
        """Whether the backbone tensor ``name`` is read by the stored prefix: the stem's and the frozen blocks'."""
        try:
            part = self.backbone.block_layout().part_of(name)
        except RuntimeError:  # a buffer outside the layout's parts (attention masks, index tables): include it
            part = -1
        return part is not None and part < self.frozen_units

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

    def use_layout_for(self, device: torch.device) -> None:
        """Channels-last weights, once, where that is faster on ``device`` (``channels_last_pays``; convolutional
        backbones with ``channels_last: true`` only). Training calls it before DDP wraps the model, so that the
        gradient buckets see the layout; otherwise the first forward on the device does."""
        if self.channels_last and not self._in_channels_last and channels_last_pays(device):
            self.backbone.to(memory_format=torch.channels_last)
            self._in_channels_last = True

    def _layout_for_device(self, images: torch.Tensor) -> torch.Tensor:
        if self._in_channels_last or (self.channels_last and channels_last_pays(images.device)):
            self.use_layout_for(images.device)
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


class FrozenBaseEncoder(ItemEncoder):
    """Base of the rungs whose backbone weights are all frozen (``lora``, ``frozen``, ``side``). The frozen base
    includes its normalisation statistics: the backbone runs in evaluation mode in training too (BatchNorm reads
    its running statistics, no stochastic depth), so an item's vector depends on its cover and what trains alone,
    never on the batch, and training scores items as evaluation does."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def prefix_randomness(self) -> list[str]:
        return []  # the backbone runs in evaluation mode in training too


class FrozenBackboneEncoder(FrozenBaseEncoder):
    """Base of the rungs that freeze the whole backbone (``adaptation: frozen | side``): ``prefix`` is a state per
    item computed once (the store), ``from_prefix`` the small trainable part, so a training step runs no encoder.

    With the backbone in evaluation mode the state is a function of the cover alone, so the stored and the computed
    states are the same and the store is exact."""

    requires_store = True

    def __init__(self, name: str, backbone: Backbone, head: nn.Module, readout: str, channels_last: bool):
        for p in backbone.parameters():
            p.requires_grad_(False)
        super().__init__(name, backbone, head, readout, channels_last)
        self.frozen_units = len(self._stages.units) if self._stages is not None else 0
        self.backbone.eval()

    def _in_prefix(self, name: str) -> bool:
        return True  # every parameter and buffer of the backbone computes the stored state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_prefix(self.prefix(images))


class FrozenEncoder(FrozenBackboneEncoder):
    """``adaptation: frozen``: the backbone's pooled output (``Backbone.pooled``: the readout as a head receives
    it, the mean of the tokens for the per-token ``mean`` readout) is stored; only the projection head trains."""

    adaptation = "frozen"

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.pooled(self._layout_for_device(images))

    def from_prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class SideNetwork(nn.Module):
    """A small network beside the frozen backbone (after IISAN, SIGIR'24): block l's pooled state x_l is projected
    to the side width and folded into a running state, ``h_l = h_{l-1} + sigmoid(g_l) * MLP_l(LN_l(h_{l-1} +
    P_l x_l))`` from ``h_0 = 0``, so the side network learns which depths of the encoder matter for the items; the
    result is LayerNormed for the head. ``g_l`` starts at 0 (every block weighs one half)."""

    def __init__(self, widths: tuple[int, ...], width: int):
        super().__init__()
        self.widths, self.width = tuple(int(w) for w in widths), int(width)
        self.down = nn.ModuleList(nn.Linear(w, width) for w in self.widths)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in self.widths)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
                                    for _ in self.widths)
        self.gates = nn.Parameter(torch.zeros(len(self.widths)))
        self.out_norm = nn.LayerNorm(width)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        h = states.new_zeros(states.shape[0], self.width)
        for i, x in enumerate(states.split(self.widths, dim=-1)):
            h = h + torch.sigmoid(self.gates[i]) * self.blocks[i](self.norms[i](h + self.down[i](x)))
        return self.out_norm(h)


class SideEncoder(FrozenBackboneEncoder):
    """``adaptation: side``: each block's pooled state (``Stages.state``: the class token, or the mean over
    positions) is stored, concatenated, ``sum(widths)`` numbers per item; the side network and the head train."""

    adaptation = "side"

    def __init__(self, name: str, backbone: Backbone, head: nn.Module, readout: str, channels_last: bool,
                 side: SideNetwork):
        super().__init__(name, backbone, head, readout, channels_last)
        self.side = side

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        st = self._stages
        x = st.stem(self._layout_for_device(images))
        states = []
        for unit in st.units:
            x = unit(x)
            states.append(st.state(x))
        return torch.cat(states, dim=-1)

    def from_prefix(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.side(x))


class LoraEncoder(FrozenBaseEncoder):
    """``adaptation: lora``: the backbone's weights are frozen and adapters on its last blocks train."""

    adaptation = "lora"


def _head(config, width: int, out_dim: int, xavier: bool) -> nn.Module:
    return projection_head(width, list(config["encoder_head_layers"]), out_dim, config["encoder_head_activation"],
                           xavier=xavier)


def _trainable_blocks(config, spec) -> int:
    """``encoder_trainable_blocks``, or the encoder's shipped setting when null."""
    blocks = config["encoder_trainable_blocks"]
    return spec.trainable_blocks if blocks is None else int(blocks)


def _build_blocks(config, backbone: Backbone, spec, name: str, readout: str, out_dim: int) -> ItemEncoder:
    n = _trainable_blocks(config, spec)
    set_trainable_blocks(backbone, n, name, _where(config, "encoder_trainable_blocks"))
    head = _head(config, backbone.width, out_dim, xavier=readout not in spec.default_init_readouts)
    encoder = ItemEncoder(name, backbone, head, readout, config["channels_last"], config["encoder_grad_checkpointing"])
    layout = backbone.block_layout()
    encoder.how = "everything trains" if n == -1 else f"the last {n} of {len(layout.units)} blocks train"
    return encoder


def _build_frozen(config, backbone: Backbone, spec, name: str, readout: str, out_dim: int) -> ItemEncoder:
    head = _head(config, backbone.width, out_dim, xavier=readout not in spec.default_init_readouts)
    encoder = FrozenEncoder(name, backbone, head, readout, config["channels_last"])
    encoder.how = f"adaptation frozen: the encoder is frozen, its pooled {backbone.width}-d output is stored"
    return encoder


def _build_side(config, backbone: Backbone, spec, name: str, readout: str, out_dim: int) -> ItemEncoder:
    stages = backbone.stages()
    if stages is None or stages.state is None or stages.widths is None:
        able = ", ".join(ADAPTATION_ENCODERS["side"])
        raise ConfigError(f"{_where(config, 'adaptation')} = 'side': encoder {name} cannot be cut at its blocks with "
                          f"a pooled state per block; side supports {able}")
    width = int(config["side_width"])
    head = _head(config, width, out_dim, xavier=True)
    encoder = SideEncoder(name, backbone, head, readout, config["channels_last"], SideNetwork(stages.widths, width))
    encoder.how = (f"adaptation side: the encoder is frozen, the pooled state of each of its {len(stages.widths)} "
                   f"blocks is stored ({sum(stages.widths)} numbers per item), a side network of width {width} trains")
    return encoder


def _build_lora(config, backbone: Backbone, spec, name: str, readout: str, out_dim: int) -> ItemEncoder:
    """The last ``encoder_trainable_blocks`` blocks get adapters (-1: every block); the base weights, the stem
    and what follows the blocks stay frozen; the head trains. The frozen blocks below the first adapted one are
    the frozen-prefix store's, as with ``blocks``."""
    from .lora import add_adapters
    layout = backbone.block_layout()
    if layout is None:
        raise ConfigError(f"{_where(config, 'adaptation')} = 'lora': encoder {name} has no block layout, so its "
                          f"blocks cannot be chosen; use adaptation: blocks with encoder_trainable_blocks: -1")
    total = len(layout.units)
    n = _trainable_blocks(config, spec)
    n = total if n == -1 else n
    if not 1 <= n <= total:
        raise ConfigError(f"{_where(config, 'encoder_trainable_blocks')} = {n}: adaptation lora adapts the last N "
                          f"blocks of {name}'s {total}; use 1..{total}, or -1 for all")
    for p in backbone.parameters():
        p.requires_grad_(False)
    rank, alpha, targets = int(config["lora_rank"]), float(config["lora_alpha"]), config["lora_targets"]
    added = 0
    for unit in layout.units[total - n:]:
        for prefix in unit:
            added += add_adapters(backbone.net.get_submodule(prefix), rank, alpha, targets)
    if added == 0:
        raise ConfigError(f"{_where(config, 'lora_targets')} = {targets!r}: the last {n} blocks of {name} hold no "
                          f"such weight (attention adapts attention projections only; all adapts every Linear "
                          f"and Conv2d)")
    head = _head(config, backbone.width, out_dim, xavier=readout not in spec.default_init_readouts)
    encoder = LoraEncoder(name, backbone, head, readout, config["channels_last"], config["encoder_grad_checkpointing"])
    encoder.how = (f"adaptation lora: rank {rank}, alpha {alpha:g} on {added} weights ({targets}) of the last {n} of "
                   f"{total} blocks; the base weights are frozen")
    return encoder


# adaptation -> builder of the item encoder (config, backbone, spec, name, readout, out_dim); one entry per rung
ADAPTATIONS = {"blocks": _build_blocks, "lora": _build_lora, "frozen": _build_frozen, "side": _build_side}
# which encoders each rung takes, for the docs and the refusal (frozen: every encoder; its pooled output)
ADAPTATION_ENCODERS = {"side": ("clip_vit_b32", "clip_rn50", "clip_rn50x4", "clip_rn50x16", "clip_rn50x64",
                                "resnet50")}


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
    adaptation = config.get("adaptation") or "blocks"  # absent from the plain dicts that build encoders alone
    encoder = ADAPTATIONS[adaptation](config, backbone, spec, name, readout, out_dim)
    log.info("item encoder %s (%s, %s readout, width %d; %s): %d of %d parameters trainable",
             name, spec.backbone, readout, backbone.width, encoder.how,
             encoder.trainable_parameters(), encoder.total_parameters())
    randomness = training_randomness([backbone.net]) if isinstance(encoder, FrozenBaseEncoder) else []
    if randomness:
        log.info("adaptation %s: the frozen encoder runs in evaluation mode, also in training (its %s would "
                 "otherwise make an item's vector depend on the batch)",
                 adaptation, ", ".join(randomness))
    return encoder
