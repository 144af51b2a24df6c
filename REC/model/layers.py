"""Shared layers: building blocks common to several models."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import ModelConfigError, config_error, key_ref

ACTIVATIONS = {
    "gelu": nn.GELU,  # exact erf form, as the original
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def mask_value(dtype: torch.dtype) -> float:
    """The value a masked score takes: the most negative finite number of the scores' dtype.

    The original's fixed -1e9 overflows to -inf in fp16; a row whose positions are all masked (the query at a
    left-padding position) then has no finite score, and a softmax without a guard for that turns it into NaN,
    which reaches every position through the next layer's values (0 weight times NaN is NaN). With the dtype's
    own minimum such a row stays finite in every precision: its output is some average of the values, which
    nothing reads (padding positions are masked as keys and carry no loss). In fp32 nothing else changes: a
    masked score gets weight exactly 0 with either constant.
    """
    return torch.finfo(dtype).min


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``allowed`` (True where a query may attend) -> additive mask of ``dtype``: 0 or ``mask_value``."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, mask_value(dtype))


class Dropout(nn.Module):
    """Inverted dropout with a cheaper mask: one 64-bit random word gives four 16-bit lanes.

    ``nn.Dropout`` on CPU draws one random number per element (about 2 ms for a 64x10x512 batch, a tenth of
    a SASRec training step); this draws a quarter as many words. Keep probability is exact to 1/65536 and the
    mask comes from torch's generator, so ``seed`` still makes runs repeatable. On CUDA, where Philox
    dropout is already cheap, it defers to ``F.dropout``.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ModelConfigError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = int(round(p * 65536)) - 32768

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        words = torch.empty(x.numel() // 4 + 1, dtype=torch.int64, device=x.device).random_()
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= self.threshold
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ModelConfigError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def mlp_layers(sizes: list[int], dropout: float) -> nn.Sequential:
    """Dropout -> Linear -> BatchNorm1d -> tanh per consecutive pair of ``sizes`` (the activation follows the
    last layer too, as the original's MLPLayers with MF's setting); fewer than two sizes give the identity."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        layers += [Dropout(dropout), nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.Tanh()]
    return nn.Sequential(*layers)


class MultiHeadAttention(nn.Module):
    """Post-LN self-attention block: ``LayerNorm(x + dropout(W_o attn(x)))``."""

    def __init__(self, d: int, n_heads: int, attn_dropout: float, hidden_dropout: float, eps: float):
        super().__init__()
        if d % n_heads:
            raise ModelConfigError(f"embedding_size {d} is not a multiple of n_heads {n_heads}")
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.dropout = Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``mask``: bool [B, 1, L, L], True where a query may attend (``causal_padding_mask``); it becomes an
        additive mask in the dtype of the scores here, where that dtype is known (fp16 under autocast).
        ``last_only``: compute only the last query position ([B, 1, d] out); keys and values stay complete."""
        b, l, d = x.shape
        split = lambda t: t.view(b, t.shape[1], self.n_heads, d // self.n_heads).transpose(1, 2)  # noqa: E731
        x_q = x[:, -1:] if last_only else x
        mask = mask[..., -1:, :] if last_only else mask
        q, k, v = split(self.query(x_q)), split(self.key(x)), split(self.value(x))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(mask, q.dtype),
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(b, x_q.shape[1], d)
        return self.norm(x_q + self.dropout(self.out(ctx)))


class FeedForward(nn.Module):
    def __init__(self, d: int, inner: int, act: str, dropout: float, eps: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, inner), activation(act), nn.Linear(inner, d), Dropout(dropout))
        self.norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


class TransformerEncoder(nn.Module):
    """``n_layers`` post-LN layers (attention then feed-forward); returns the last layer's output."""

    def __init__(self, n_layers: int, d: int, n_heads: int, inner: int, hidden_dropout: float,
                 attn_dropout: float, act: str, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleDict({"attention": MultiHeadAttention(d, n_heads, attn_dropout, hidden_dropout, eps),
                           "feed_forward": FeedForward(d, inner, act, hidden_dropout, eps)})
            for _ in range(n_layers))

    @classmethod
    def from_config(cls, config) -> "TransformerEncoder":
        """Built from the transformer keys every SASRec-like model shares (n_layers, n_heads, inner_size, ...)."""
        d = config["embedding_size"]
        check_heads_divide(config)
        return cls(n_layers=config["n_layers"], d=d, n_heads=config["n_heads"], inner=config["inner_size"] * d,
                   hidden_dropout=config["hidden_dropout_prob"], attn_dropout=config["attn_dropout_prob"],
                   act=config["hidden_act"], eps=config["layer_norm_eps"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """``last_only`` returns [B, 1, d], the last position only: the last layer then computes one query per
        sequence instead of L, which is all next-item scoring needs (it halves a 2-layer evaluation)."""
        for i, layer in enumerate(self.layers):
            x = layer["feed_forward"](layer["attention"](x, mask, last_only and i == len(self.layers) - 1))
        return x


def check_heads_divide(config) -> None:
    """Attention splits the width d = embedding_size into n_heads equal heads."""
    if config["embedding_size"] % config["n_heads"]:
        raise config_error(config, "n_heads", f"a divisor of {key_ref(config, 'embedding_size')}")


def causal_padding_mask(item_seq: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool, True where a position may attend: itself and earlier non-padding positions."""
    l = item_seq.shape[1]
    return (item_seq != 0)[:, None, None, :] & torch.ones(l, l, dtype=torch.bool, device=item_seq.device).tril()


def init_normal_(module: nn.Module, std: float) -> None:
    """N(0, std) for Linear and Embedding weights (every row, padding included, as the original), zero biases,
    unit LayerNorm."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
    if isinstance(module, nn.LayerNorm):
        module.weight.data.fill_(1.0)
        module.bias.data.zero_()

