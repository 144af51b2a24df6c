"""LightGCN (He et al., SIGIR 2020) as PixelRec trains it, on torch sparse tensors (no torch_geometric).

The graph is one symmetric-normalised adjacency over users then items (node ``u`` is user u, node
``user_num + i`` is item i; padding rows are isolated nodes), held as a sparse CSR matrix. Repeated interactions
are merged into one entry weighted by their count, which sends the same messages as the original's repeated edges.

Memory of the adjacency: two directed entries per interaction (fewer when pairs repeat), each an int32 column index
and a float32 weight, so 16 bytes per interaction: 160 MB per 10M interactions (int64 indices past 2^31 entries:
24 bytes, 240 MB per 10M), plus 4 bytes per node of row offsets. The original's int64 edge_index and float edge
weights cost 40 bytes per interaction (400 MB per 10M). Building it peaks at about 75 bytes per interaction
(750 MB per 10M, measured with tracemalloc) for a moment, in host memory.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..base import DatasetInfo, RecModel, TargetRows, bpr_loss
from ..registry import register_model
from ...utils.batch_keys import ITEMS, NEGATIVES, USER_ID


def normalized_adjacency(users: np.ndarray, items: np.ndarray, user_num: int, item_num: int) -> torch.Tensor:
    """[N, N] CSR, N = user_num + item_num: entry (a, b) = (edges a->b) * deg(a)^-1/2 * deg(b)^-1/2, where every
    interaction gives the edges user->item and item->user and deg counts edges (0 counts as 1, as the original)."""
    n = user_num + item_num
    deg = np.concatenate([np.bincount(users, minlength=user_num), np.bincount(items, minlength=item_num)])
    inv_sqrt = (np.maximum(deg, 1) ** -0.5).astype(np.float32)
    item_nodes = user_num + items
    keys = np.concatenate([users * n + item_nodes, item_nodes * n + users])
    del item_nodes
    keys.sort()  # by (row, column): CSR order; in place, unlike np.unique, to keep the peak low at scale
    first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    counts = np.diff(np.append(first, len(keys))).astype(np.float32)
    keys = keys[first]
    del first
    rows = keys // n
    cols = keys - rows * n
    del keys
    values = counts * inv_sqrt[rows] * inv_sqrt[cols]
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
    index = np.int32 if max(len(cols), n) < 2 ** 31 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.from_numpy(crow.astype(index)), torch.from_numpy(cols.astype(index)),
                                       torch.from_numpy(values), (n, n), device="cpu", check_invariants=True)


class _SymmetricSpMM(torch.autograd.Function):
    """``A @ x`` whose backward is ``A @ grad``: A is symmetric, so no transposed copy of it is ever made."""

    @staticmethod
    def forward(ctx, adjacency, x):
        ctx.adjacency = adjacency  # a constant, not an autograd input
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad):
        return None, ctx.adjacency @ grad


@register_model("IDNet")
class LightGCN(RecModel):
    input_type = "PAIR"
    needs_user_id = True
    reads_item_table_whole = True  # the propagation at every step, as the original (propagation: epoch reads rows)

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        if info.train_users is None:
            raise ValueError("LightGCN needs the training interactions: build its DatasetInfo with from_split")
        d, self.n_layers, self.propagation = config["embedding_size"], config["n_layers"], config["propagation"]
        self.reads_item_table_whole = self.propagation == "step"
        self.user_embedding = self.user_table(info.user_num, d)
        self.item_embedding = self.item_table(info.item_num, d)
        nn.init.xavier_normal_(self.user_embedding.weight)
        nn.init.xavier_normal_(self.item_embedding.weight)
        # A plain attribute, not a buffer: DDP would broadcast buffers at every step and checkpoints would carry
        # the graph, which is rebuilt from the data anyway. _apply below moves it with the module. A model built
        # on the meta device (the launcher's shape check) gets no graph: it is data, not shape, and costs memory.
        self.adjacency = None if self.user_embedding.weight.is_meta else normalized_adjacency(
            info.train_users, info.train_items, info.user_num, info.item_num)
        self._eval_users: torch.Tensor | None = None
        self._higher: tuple[torch.Tensor, torch.Tensor] | None = None  # propagation: epoch's layers 1..n_layers

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        if self.adjacency is not None:
            self.adjacency = fn(self.adjacency)
        return module

    def train(self, mode: bool = True):
        # the weights may change from here on; the trainer calls this at the start of every epoch, which is when
        # propagation: epoch propagates again
        self._eval_users = self._higher = None
        return super().train(mode)

    def _layers(self, with_ego: bool) -> torch.Tensor:
        """[user_num + item_num, d]: the sum of layers 0..n_layers (or 1..n_layers) over n_layers + 1, always in
        fp32 (sparse products have no reduced-precision kernels on CPU)."""
        with torch.autocast(self.adjacency.device.type, enabled=False):
            x = torch.cat([self.user_embedding.weight, self.item_embedding.weight]).float()
            total = x if with_ego else None
            for _ in range(self.n_layers):
                x = _SymmetricSpMM.apply(self.adjacency, x)
                total = x if total is None else total + x
        return total / (self.n_layers + 1)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [user_num, d], items [item_num, d]): the mean of layers 0..n_layers."""
        return self._layers(with_ego=True).split([self.user_num, self.item_num])

    def _epoch_rows(self):
        """propagation: epoch: (user rows, item rows) as functions of ids, each its layer-0 embedding (which learns)
        plus layers 1..n_layers from this epoch's one propagation (constants, computed without gradients)."""
        if self._higher is None:
            with torch.no_grad():
                self._higher = self._layers(with_ego=False).split([self.user_num, self.item_num])
        higher_users, higher_items = self._higher
        share = 1.0 / (self.n_layers + 1)
        return (lambda ids: self.user_embedding(ids).float() * share + higher_users[ids],
                lambda ids: self.item_embedding(ids).float() * share + higher_items[ids],
                lambda: self.item_embedding.weight.float() * share + higher_items)

    def paper_loss(self, batch):
        if self.propagation == "epoch":
            user_rows, item_rows, _ = self._epoch_rows()
            u, pos_items, neg_items = user_rows(batch[USER_ID]), item_rows(batch[ITEMS]), item_rows(batch[NEGATIVES])
        else:  # the full propagation at every step, as the original
            users, items = self.propagate()
            u, pos_items, neg_items = users[batch[USER_ID]], items[batch[ITEMS]], items[batch[NEGATIVES]]
        pos = (u * pos_items).sum(-1)
        neg = (u * neg_items).sum(-1)
        return bpr_loss(pos, neg).mean()  # the original's -mean(1e-8 + log sigmoid) differs by the constant 1e-8

    def target_rows(self, batch):
        """One row per training interaction, from one propagation of the whole graph (as the paper's loss), or
        from this epoch's (propagation: epoch)."""
        if self.propagation == "epoch":
            user_rows, item_rows, all_items = self._epoch_rows()
            return TargetRows(user_rows(batch[USER_ID]), batch[ITEMS], item_rows, all_items)
        users, items = self.propagate()
        return TargetRows(users[batch[USER_ID]], batch[ITEMS], lambda ids: items[ids], lambda: items)

    def item_representations(self):
        """Propagates once per evaluation; the user half is kept for the user_representations calls that follow."""
        users, items = self.propagate()
        self._eval_users = users.detach()
        return items

    def user_representations(self, batch):
        if self._eval_users is None:
            self._eval_users = self.propagate()[0].detach()
        return self._eval_users[batch[USER_ID]]
