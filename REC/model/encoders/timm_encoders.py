"""timm backbones: torchvision's ResNet50, Swin-T, Swin-B, BEiT-base, and any timm model as ``timm/<name>``.

The original built Swin and BEiT with Hugging Face transformers; timm ships the same checkpoints
(Microsoft's Swin and BEiT releases) under the tags named below, and torchvision's ResNet50 as ``tv_in1k``.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable

import timm
import torch
from torch import nn

from REC.config import ConfigError

from .backbone import Backbone, BlockLayout, NoFeatureMapError, Stages, mean_over_positions
from .registry import EncoderSpec, UnknownEncoderError, register_encoder, register_encoder_family
from .weights import Weights

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def create_timm(model_name: str, weights: Weights, encoder: str) -> nn.Module:
    """``timm.create_model(model_name, num_classes=0)`` (pooled features, no classifier) with the weights asked
    for: random, the local file (timm's ``pretrained_cfg_overlay``), or the hub."""
    path = weights.local_file()  # checked even on the meta device, so a wrong path fails in preflight
    if not weights.load:
        return timm.create_model(model_name, pretrained=False, num_classes=0)
    if path is None:
        try:
            return timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as exc:  # offline: huggingface_hub raises its own OSError subclasses
            raise weights.hub_error(encoder, f"timm {model_name}", exc) from exc
    try:
        return timm.create_model(model_name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    except RuntimeError as exc:
        raise ConfigError(f"{weights.where}: {str(path)!r} does not fit {encoder} (timm {model_name}): "
                          f"{_head(exc)}") from exc


def _head(exc: Exception, lines: int = 3) -> str:
    return " ".join(str(exc).splitlines()[:lines])


class TimmBackbone(Backbone):
    """``pool``: timm's own pooled features (``num_classes=0``); ``cls``: the first output token, which for
    Swin is the top-left patch (it has no class token; the original's quirk)."""

    has_feature_map = True  # whatever forward_features gives; ``feature_map`` says when it is neither map nor tokens

    def __init__(self, net: nn.Module, readout: str, layout: BlockLayout | None, is_convolutional: bool,
                 cut: Callable[["TimmBackbone"], Stages | None] | None = None):
        cfg = getattr(net, "pretrained_cfg", None) or {}
        width = getattr(net, "head_hidden_size", None) or net.num_features  # after pre-logits layers (MobileNetV3)
        super().__init__(net, width=width, input_size=cfg.get("input_size", (3, 224, 224))[-1],
                         mean=cfg.get("mean", IMAGENET_MEAN), std=cfg.get("std", IMAGENET_STD),
                         is_convolutional=is_convolutional)
        self.readout, self._layout, self._cut = readout, layout, cut

    def block_layout(self) -> BlockLayout | None:
        return self._layout

    def refuse_size(self, side: int) -> str | None:
        """timm's transformers (ViT, DeiT, BEiT, Swin, ...) embed patches at one image size unless built with
        ``dynamic_img_size``: their patch embedding asserts it, and their position tables (Swin's attention
        windows too) are made for its grid. A dynamic one still asserts whole patches unless it pads."""
        embed = getattr(self.net, "patch_embed", None)
        size, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
        if size is None or patch is None:  # a CNN: any side
            return None
        if getattr(embed, "strict_img_size", False) and (side, side) != tuple(size):
            grid = embed.grid_size
            return (f"it takes {size[0]} x {size[1]} px covers only (timm builds its patch embedding for a {grid[0]} "
                    f"x {grid[1]} grid of {patch[0]} x {patch[1]} px patches)")
        if not getattr(embed, "dynamic_img_pad", False) and (side % patch[0] or side % patch[1]):
            return f"it takes sides that are multiples of its {patch[0]} x {patch[1]} px patches"
        return None

    def stages(self) -> Stages | None:
        return self._cut(self) if self._cut is not None else None

    def forward(self, images):
        return self.read(self.net.forward_features(images))

    def read(self, features: torch.Tensor) -> torch.Tensor:
        """The readout of ``forward_features``' output: its first token (``cls``; Swin: normed [n, H, W, C]) or
        timm's pooled features, which is what ``net(images)`` returns with ``num_classes=0``."""
        if self.readout == "cls":
            return features.flatten(1, -2)[:, 0]
        return self.net.forward_head(features)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """``forward_features``' output before pooling: a map made ``[n, H, W, C]`` (timm's CNNs give NCHW, Swin
        NHWC), or tokens ``[n, R, C]`` without the class and register tokens (``num_prefix_tokens``)."""
        out = self.net.forward_features(images)
        if out.ndim == 4:
            return out if getattr(self.net, "output_fmt", "NCHW") == "NHWC" else out.permute(0, 2, 3, 1)
        if out.ndim == 3:
            return out[:, getattr(self.net, "num_prefix_tokens", 0):]
        raise NoFeatureMapError(f"its forward_features gives shape {list(out.shape)}, not a map or tokens")


def _resnet_layout(net) -> BlockLayout:
    stages = [f"layer{i}" for i in range(1, 5)]
    units = tuple((f"{s}.{j}",) for s in stages for j in range(len(getattr(net, s))))
    return BlockLayout(stem=("conv1", "bn1"), units=units, tail=("fc",))


def _swin_layout(net) -> BlockLayout:
    """One unit per Swin block. HF runs patch merging at the END of a stage, timm at the START of the next
    (``layers.{s+1}.downsample``); the original's cut froze stage 1's merging with stage 1, so a
    stage's last block owns the merging that follows it."""
    units = []
    for s, stage in enumerate(net.layers):
        for b in range(len(stage.blocks)):
            owned = [f"layers.{s}.blocks.{b}"]
            if b == len(stage.blocks) - 1 and s + 1 < len(net.layers):
                owned.append(f"layers.{s + 1}.downsample")
            units.append(tuple(owned))
    return BlockLayout(stem=("patch_embed", "absolute_pos_embed", "layers.0.downsample"), units=tuple(units),
                       tail=("norm", "head"))


def _resnet_stages(b: TimmBackbone) -> Stages:
    net = b.net
    stem = (net.conv1, net.bn1, net.act1, net.maxpool)

    def run_stem(x):
        return net.maxpool(net.act1(net.bn1(net.conv1(x))))
    units = [block for s in (net.layer1, net.layer2, net.layer3, net.layer4) for block in s]
    widths = tuple((getattr(u, "bn3", None) or u.bn2).num_features for u in units)  # bottleneck or basic block
    return Stages(run_stem, stem, units, b.read, state=mean_over_positions, widths=widths)


def _swin_stages(b: TimmBackbone) -> Stages:
    """Units as ``_swin_layout``: a stage's last block runs the patch merging that opens the next stage."""
    net = b.net
    units = []
    for s, stage in enumerate(net.layers):
        for j, block in enumerate(stage.blocks):
            last = j == len(stage.blocks) - 1 and s + 1 < len(net.layers)
            units.append(nn.Sequential(block, net.layers[s + 1].downsample) if last else block)

    def run_stem(x):
        return net.layers[0].downsample(net.patch_embed(x))
    return Stages(run_stem, (net.patch_embed, net.layers[0].downsample), units, lambda x: b.read(net.norm(x)))


def _vit_stages(b: TimmBackbone) -> Stages | None:
    """BEiT-style: class token, optional absolute positions, blocks, final norm. A shared relative position bias
    (computed once per forward and given to every block) is not cut here."""
    net = b.net
    if getattr(net, "rel_pos_bias", None) is not None:
        return None

    def run_stem(x):
        x = net.patch_embed(x)
        x = torch.cat((net.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if net.pos_embed is not None:
            x = x + net.pos_embed
        return net.pos_drop(x)
    return Stages(run_stem, (net.patch_embed, net.pos_drop), list(net.blocks), lambda x: b.read(net.norm(x)))


def _vit_layout(net) -> BlockLayout:
    return BlockLayout(stem=("cls_token", "pos_embed", "patch_embed", "rel_pos_bias"),
                       units=tuple((f"blocks.{i}",) for i in range(len(net.blocks))),
                       tail=("norm", "fc_norm", "head"))


@register_encoder("resnet50", backbone="timm resnet50.tv_in1k (torchvision's weights)", readouts=("pool",),
                  trainable_blocks=-1, default_init_readouts=("pool",))
def resnet50(readout: str, weights: Weights) -> Backbone:
    net = create_timm("resnet50.tv_in1k", weights, "resnet50")
    return TimmBackbone(net, readout, _resnet_layout(net), is_convolutional=True, cut=_resnet_stages)


# Swin: the original's tune_scale 78 freezes the embeddings and stages 0-1, so stages 2-3 train:
# 6 + 2 blocks for Swin-T (depths 2/2/6/2), 18 + 2 for Swin-B (2/2/18/2).
@register_encoder("swin_t", backbone="timm swin_tiny_patch4_window7_224.ms_in1k", readouts=("pool", "cls"),
                  trainable_blocks=8)
def swin_t(readout: str, weights: Weights) -> Backbone:
    net = create_timm("swin_tiny_patch4_window7_224.ms_in1k", weights, "swin_t")
    return TimmBackbone(net, readout, _swin_layout(net), is_convolutional=False, cut=_swin_stages)


@register_encoder("swin_b", backbone="timm swin_base_patch4_window7_224.ms_in22k_ft_in1k", readouts=("pool", "cls"),
                  trainable_blocks=20)
def swin_b(readout: str, weights: Weights) -> Backbone:
    net = create_timm("swin_base_patch4_window7_224.ms_in22k_ft_in1k", weights, "swin_b")
    return TimmBackbone(net, readout, _swin_layout(net), is_convolutional=False, cut=_swin_stages)


# BEiT: tune_scale 183 = 3 + 10 x 18 HF tensors, so blocks 10-11 and the pooling LayerNorm train.
# The readout is always the LayerNorm of the mean patch token (timm's avg pool + fc_norm), as the original,
# which ignored `method`.
@register_encoder("beit_b", backbone="timm beit_base_patch16_224.in22k_ft_in22k_in1k", readouts=("pool",),
                  trainable_blocks=2)
def beit_b(readout: str, weights: Weights) -> Backbone:
    net = create_timm("beit_base_patch16_224.in22k_ft_in22k_in1k", weights, "beit_b")
    return TimmBackbone(net, readout, _vit_layout(net), is_convolutional=False, cut=_vit_stages)


@register_encoder_family("timm/")
def timm_any(model_name: str) -> EncoderSpec:
    """``timm/<model>[.<tag>]``: timm's pooled features; no block layout, so everything trains."""
    base = model_name.split(".", 1)[0]
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=8, cutoff=0.6)
        raise UnknownEncoderError(f"timm has no model {base!r}" + (f"; close names: {close}" if close else ""))
    encoder = f"timm/{model_name}"

    def build(readout: str, weights: Weights) -> Backbone:
        net = create_timm(model_name, weights, encoder)
        return TimmBackbone(net, readout, None, is_convolutional=_has_conv_blocks(net))
    return EncoderSpec(encoder, f"timm {model_name}", ("pool",), -1, build)


def _has_conv_blocks(net: nn.Module) -> bool:
    """More than one 2-D convolution: a CNN (ConvNeXt included), not a transformer with a patch-embedding conv;
    channels-last memory helps the former on CUDA."""
    return sum(isinstance(m, nn.Conv2d) for m in net.modules()) > 1
