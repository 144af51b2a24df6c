"""LightSANs (Fan et al., SIGIR 2021) with item-ID embeddings, as PixelRec trains it.

Low-rank self-attention: keys and values are pooled into k latent interests, and positions attend separately
(decoupled position encoding). Each training example is a prefix (PREFIX); the last position's output scores
the prefix's last item against one negative.

Two deliberate fixes of the original code:

* Padding is masked. The original has no mask at all, so the left padding of a short history is pooled into
  the interests and normalises the query-axis softmaxes, and the output depends on how much padding there is.
  Here padding positions get the most negative finite value of the scores' dtype before every softmax over the
  sequence (the interest pooling and both query-axis softmaxes; -1e9 would be -inf in fp16), and padding values
  carry no weight in position attention. With position ids that are absolute window slots, as in the original,
  the output at a real position is then the same whatever the padding in front of it.
* ``theta`` (the item-to-interest projection) is drawn N(0, initializer_range) like every other weight; the
  original's N(0, 1) makes the interest softmax near one-hot at d = 512 from the first step.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..base import DatasetInfo, ModelConfigError
from ..layers import Dropout, FeedForward, check_heads_divide, init_normal_, mask_value
from ..registry import register_model
from ..target_bpr import TargetBPRModel
from ...utils.batch_keys import ITEMS, ITEM_SEQ


def _masked_softmax_over_sequence(scores: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Softmax over dim -2 (the sequence axis, as RecBole) with padding rows pushed to ~0 weight: ``pad`` (bool,
    broadcast against ``scores``) sets them to the scores' dtype's ``mask_value``, finite in fp16 too."""
    return torch.softmax(scores.masked_fill(pad, mask_value(scores.dtype)), dim=-2)


class ItemToInterestAggregation(nn.Module):
    """[B, L, d] -> [B, k, d]: each interest is a softmax-weighted mix of the sequence's (real) items."""

    def __init__(self, d: int, k: int, std: float):
        super().__init__()
        self.theta = nn.Parameter(torch.randn(d, k) * std)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        weights = _masked_softmax_over_sequence(x @ self.theta, pad[:, :, None])  # [B, L, k]
        return weights.transpose(1, 2) @ x


class LightMultiHeadAttention(nn.Module):
    def __init__(self, d: int, n_heads: int, k: int, hidden_dropout: float, attn_dropout: float, eps: float,
                 std: float):
        super().__init__()
        if d % n_heads:
            raise ModelConfigError(f"embedding_size {d} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.head = n_heads, d // n_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.pool_key, self.pool_value = ItemToInterestAggregation(d, k, std), ItemToInterestAggregation(d, k, std)
        self.pos_query, self.pos_key = nn.Linear(d, d), nn.Linear(d, d)
        self.pos_norm = nn.LayerNorm(d, eps=eps)
        self.pos_scale = (2.0 * self.head) ** -0.5  # the paper's decoupled-position scaling, factor 2
        self.attn_dropout = Dropout(attn_dropout)
        self.out = nn.Linear(d, d)
        self.dropout = Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d, eps=eps)

    def heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(*t.shape[:-1], self.n_heads, self.head).transpose(-3, -2)  # [..., h, L, head]

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """``x`` [B, L, d], ``pos_emb`` [L, d], ``pad`` [B, L] bool (True at padding)."""
        b, l, d = x.shape
        query_pad = pad[:, None, :, None]  # [B, 1, L, 1]: the softmaxes below run over queries
        value = self.value(x)
        q = self.heads(self.query(x))
        k = self.heads(self.pool_key(self.key(x), pad))
        v = self.heads(self.pool_value(value, pad))
        item_attn = _masked_softmax_over_sequence(q @ k.transpose(-1, -2) / math.sqrt(self.head), query_pad)
        context = self.attn_dropout(item_attn) @ v

        p = self.pos_norm(pos_emb)
        pos_scores = (self.heads(self.pos_query(p)) * self.pos_scale) @ self.heads(self.pos_key(p)).transpose(-1, -2)
        pos_attn = _masked_softmax_over_sequence(pos_scores / math.sqrt(self.head), query_pad)  # [B, h, L, L]
        # the unpooled values of padding keys carry no weight
        context = context + pos_attn @ self.heads(value.masked_fill(pad[:, :, None], 0.0))

        context = context.transpose(1, 2).reshape(b, l, d)
        return self.norm(x + self.dropout(self.out(context)))


class LightTransformerEncoder(nn.Module):
    """``n_layers`` of LightMultiHeadAttention then the shared FeedForward; returns the last layer's output."""

    def __init__(self, n_layers: int, d: int, n_heads: int, k: int, inner: int, hidden_dropout: float,
                 attn_dropout: float, act: str, eps: float, std: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({"attention": LightMultiHeadAttention(d, n_heads, k, hidden_dropout, attn_dropout, eps, std),
                           "feed_forward": FeedForward(d, inner, act, hidden_dropout, eps)})
            for _ in range(n_layers))

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer["feed_forward"](layer["attention"](x, pos_emb, pad))
        return x


@register_model("IDNet")
class LightSANs(TargetBPRModel):
    input_type = "PREFIX"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, self.max_len = config["embedding_size"], config["MAX_ITEM_LIST_LENGTH"]
        std = config["initializer_range"]
        self.item_embedding = self.item_table(info.item_num, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len, d)
        self.input_norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.input_dropout = Dropout(config["hidden_dropout_prob"])
        check_heads_divide(config)
        self.encoder = LightTransformerEncoder(
            n_layers=config["n_layers"], d=d, n_heads=config["n_heads"], k=config["k_interests"],
            inner=config["inner_size"] * d, hidden_dropout=config["hidden_dropout_prob"],
            attn_dropout=config["attn_dropout_prob"], act=config["hidden_act"], eps=config["layer_norm_eps"], std=std)
        self.apply(lambda m: init_normal_(m, std))  # theta is a bare Parameter: drawn with std at construction

    def encode(self, item_seq: torch.Tensor, item_emb: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] left-padded ids (L <= M) -> [B, L, d]. Position ids are the last L slots of the M-slot window,
        so a narrower input is the same window with its leading padding cut off."""
        if item_emb is None:
            item_emb = self.item_embedding(item_seq)
        l = item_seq.shape[1]
        positions = torch.arange(self.max_len - l, self.max_len, device=item_seq.device)
        x = self.input_dropout(self.input_norm(item_emb))  # positions enter only through position attention
        return self.encoder(x, self.position_embedding(positions), item_seq == 0)

    def batch_user(self, batch, context_emb, derived):
        return self.encode(batch[ITEMS], context_emb)[:, -1]

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        return self.encode(batch[ITEM_SEQ])[:, -1]
