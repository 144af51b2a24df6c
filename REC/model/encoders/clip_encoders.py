"""OpenAI CLIP image towers from open_clip: the ModifiedResNets (RN50, RN50x4, RN50x16, RN50x64) and ViT-B/32.

Only the vision tower is built: the text tower is never used, and building it would cost seconds and memory.
Weights are read into the tower directly from the ``visual.*`` entries of a full CLIP checkpoint (open_clip's
hub files, or OpenAI's TorchScript ``.pt`` files), or from a state dict of the tower alone.
"""
from __future__ import annotations

import math
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_vision_tower  # the tower alone; open_clip's create_model also builds the text
from torch import nn

from REC.config import ConfigError

from .backbone import Backbone, BlockLayout, Stages, class_token, mean_over_positions
from .registry import register_encoder
from .weights import Weights, read_state_dict


def create_clip_visual(arch: str, weights: Weights, encoder: str) -> nn.Module:
    cfg = open_clip.get_model_config(arch)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
    path = weights.local_file()  # checked even on the meta device, so a wrong path fails in preflight
    if not weights.load:
        return visual
    if path is None:
        try:
            path = Path(open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, "openai")))
        except Exception as exc:  # offline: huggingface_hub or urllib errors
            raise weights.hub_error(encoder, f"open_clip {arch}, tag openai", exc) from exc
    state = read_state_dict(path)
    if any(k.startswith("visual.") for k in state):  # a full CLIP checkpoint
        state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    try:
        visual.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = " ".join(str(exc).splitlines()[:3])
        raise ConfigError(f"{weights.where}: {str(path)!r} does not fit {encoder} (the {arch} vision tower): "
                          f"{msg}") from exc
    return visual


MIN_RESNET_SIDE = 31


class ClipResNet(Backbone):
    """``cls``: the attention pool's output (the CLIP image embedding); ``pool``: global average of the last
    feature map, the attention pool removed (the original's CLIPItemEncoder)."""

    has_feature_map = True

    def __init__(self, visual: nn.Module, readout: str):
        pool = visual.attnpool
        width = pool.c_proj.out_features if readout == "cls" else pool.c_proj.in_features
        if readout == "pool":
            visual.attnpool = None
        super().__init__(visual, width=width, input_size=visual.image_size, mean=open_clip.OPENAI_DATASET_MEAN,
                         std=open_clip.OPENAI_DATASET_STD, is_convolutional=True)

    def refuse_size(self, side: int) -> str | None:
        # a stride-2 stem convolution, then 4 halvings (the stem's average pool and layer2-4's): the side after the
        # convolution, (side - 1) // 2 + 1, must be at least 16 for the last map to keep 1 x 1
        if side < MIN_RESNET_SIDE:
            return (f"it takes covers of at least {MIN_RESNET_SIDE} px (its stem and stages divide the side by 32, "
                    f"and a smaller side leaves no feature map)")
        return None

    def block_layout(self) -> BlockLayout:
        stages = [f"layer{i}" for i in range(1, 5)]
        return BlockLayout(stem=("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"),
                           units=tuple((f"{s}.{j}",) for s in stages for j in range(len(getattr(self.net, s)))),
                           locked=("attnpool",))  # the original kept it frozen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._finish(self._last_map(images))

    def _last_map(self, images: torch.Tensor) -> torch.Tensor:
        v = self.net
        return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))  # [n, C, H, W]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """layer4's map ``[n, H, W, C]``, before the attention pool or the average that either readout applies."""
        return self._last_map(images).permute(0, 2, 3, 1)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.attnpool is None:
            return x.mean(dim=(2, 3))
        return attention_pool(self.net.attnpool, x)

    def stages(self) -> Stages:
        v = self.net
        stem = (v.conv1, v.bn1, v.act1, v.conv2, v.bn2, v.act2, v.conv3, v.bn3, v.act3, v.avgpool)
        units = [block for s in (v.layer1, v.layer2, v.layer3, v.layer4) for block in s]
        return Stages(v.stem, stem, units, self._finish, state=mean_over_positions,
                      widths=tuple(b.bn3.num_features for b in units))


def attention_pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` output (the mean token attending over the map), computing only that one
    query. The positional table is resized (bicubic) when the map is not the pretraining grid, so the wider
    ResNets also take 224 px covers (the original's RN50x4/x16/x64 ``cls`` crashed on them)."""
    c, h, w = x.shape[1:]
    tokens = x.flatten(2).permute(2, 0, 1)  # [hw, n, c]
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens])
    pos = pool.positional_embedding
    side = math.isqrt(pos.shape[0] - 1)
    if (h, w) != (side, side):
        grid = pos[1:].reshape(1, side, side, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, c)])
    tokens = tokens + pos[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1], key=tokens, value=tokens, embed_dim_to_check=c, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=pool.training, need_weights=False)
    return out[0]


class ClipViT(Backbone):
    """Readouts of the original's HF CLIPVisionModel, from the tokens BEFORE ``ln_post`` (HF's
    ``last_hidden_state``): ``mean`` gives every token to the head and averages the results, ``cls`` token 0,
    ``pool`` the post-LayerNormed token 0 (HF's ``pooler_output``). The CLIP projection ``proj`` is removed;
    ``ln_post`` too unless the readout is ``pool``, as the original."""

    has_feature_map = True

    def __init__(self, visual: nn.Module, readout: str):
        visual.proj = None
        if readout != "pool":
            visual.ln_post = nn.Identity()
        super().__init__(visual, width=visual.transformer.width, input_size=visual.image_size[0],
                         mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD,
                         is_convolutional=False)
        self.readout, self.per_token = readout, readout == "mean"

    def refuse_size(self, side: int) -> str | None:
        # The position embeddings hold one row per patch of the pretraining grid (7 x 7 at 224 px); another side
        # gives another number of patches, which they cannot be added to. Interpolating them (as the CLIP ResNets'
        # attention pool does) would run, but would feed pretrained blocks positions they never saw.
        grid, patch = self.net.grid_size, self.net.patch_size
        if side != self.input_size:
            return (f"it takes {self.input_size} px covers only (its position embeddings are fixed for a {grid[0]} x "
                    f"{grid[1]} grid of {patch[0]} px patches)")
        return None

    def block_layout(self) -> BlockLayout:
        return BlockLayout(stem=("conv1", "class_embedding", "positional_embedding", "ln_pre"),
                           units=tuple((f"transformer.resblocks.{i}",) for i in range(len(self.net.transformer.resblocks))),
                           tail=("ln_post",))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._finish(self._tokens(images))

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.transformer(self._stem(images))  # [n, 1 + grid^2, width]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens ``[n, grid^2, width]`` after the last block, class token dropped, before ``ln_post``
        whatever the readout (as HF's ``last_hidden_state``, which the readouts other than ``pool`` see)."""
        return self._tokens(images)[:, 1:]

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        v = self.net
        x = v.conv1(images).flatten(2).transpose(1, 2)  # [n, grid^2, width]
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(v.patch_dropout(x))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.per_token else self.net.ln_post(x[:, 0])

    def stages(self) -> Stages | None:
        v = self.net
        if not v.transformer.batch_first:  # the blocks would expect [tokens, n, width]
            return None
        return Stages(self._stem, (v.conv1, v.patch_dropout, v.ln_pre), list(v.transformer.resblocks), self._finish,
                      state=class_token, widths=(v.transformer.width,) * len(v.transformer.resblocks))


# The original's trainable windows over OpenAI's parameter order are whole bottleneck blocks:
# RN50 78..164 = layer3 + layer4 (6 + 3 blocks); RN50x4 198..254, RN50x16 306..380 and RN50x64 504..596 are
# exactly layer4 (6, 8 and 10 blocks). The attention pool stays frozen in all four.
_CLIP_RESNETS = {
    "clip_rn50": ("RN50", 9),
    "clip_rn50x4": ("RN50x4", 6),
    "clip_rn50x16": ("RN50x16", 8),
    "clip_rn50x64": ("RN50x64", 10),
}


def _clip_resnet_builder(name: str, arch: str):
    def build(readout: str, weights: Weights) -> Backbone:
        return ClipResNet(create_clip_visual(arch, weights, name), readout)
    return build


for _name, (_arch, _blocks) in _CLIP_RESNETS.items():
    register_encoder(_name, backbone=f"open_clip {_arch} (openai)", readouts=("cls", "pool"),
                     trainable_blocks=_blocks, default_init_readouts=("cls",))(_clip_resnet_builder(_name, _arch))


# ViT-B/32: tune_scale 165 = 5 + 10 x 16 HF tensors, so resblocks 10-11 train. OpenAI's weights were
# trained with QuickGELU, hence the -quickgelu architecture.
@register_encoder("clip_vit_b32", backbone="open_clip ViT-B-32-quickgelu (openai)", readouts=("mean", "cls", "pool"),
                  trainable_blocks=2)
def clip_vit_b32(readout: str, weights: Weights) -> Backbone:
    return ClipViT(create_clip_visual("ViT-B-32-quickgelu", weights, "clip_vit_b32"), readout)
