"""SR-GNN (Wu et al., AAAI 2019) with item-ID embeddings, as PixelRec trains it.

Each history becomes a session graph (its distinct items as nodes, consecutive pairs as directed edges); a
gated GNN refines the node states and an attention readout over the sequence gives the user vector.

The original builds the graphs on the CPU, one sequence at a time, in its collate function (with nested Python
lists at evaluation). Here ``session_graphs`` builds a whole batch with tensor operations on the
model's device, from the same left-padded id matrices every other sequence model gets, so SRGNN needs no
dataset or evaluation path of its own. The node dimension is fixed to the input width L (a history of L items
has at most L distinct ones), which keeps shapes static and avoids a device-to-host sync per batch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..base import DatasetInfo
from ..registry import register_model
from ..target_bpr import TargetBPRModel
from ...utils.batch_keys import ITEMS, ITEM_SEQ


def session_graphs(item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Session graphs of a batch of left-padded histories ``item_seq`` [B, L] (0 = padding).

    Returns ``nodes`` [B, L] (each row's distinct real items in increasing order, then 0s), ``alias`` [B, L]
    (the node index of each position; 0 at padding, which callers mask), and ``a_in``, ``a_out`` [B, L, L]:
    row i of ``a_in`` averages node i's in-neighbours, row i of ``a_out`` its out-neighbours. Edges join
    consecutive real items; a pair repeated in the session counts once, as in the original's GraphTrainDataset.
    """
    l = item_seq.shape[1]
    real = item_seq != 0
    ordered, order = item_seq.sort(dim=1)
    first = ordered != 0  # padding sorts first and is not a node
    first[:, 1:] &= ordered[:, 1:] != ordered[:, :-1]
    rank = first.long().cumsum(1) - 1  # node index of every sorted position (-1 for padding)
    # every position of one rank holds that node's item, and padding (0) clamped onto node 0 loses the max
    nodes = torch.zeros_like(item_seq).scatter_reduce_(1, rank.clamp(min=0), ordered, reduce="amax")
    alias = torch.zeros_like(item_seq).scatter_(1, order, rank.clamp(min=0))

    pair = real[:, :-1] & real[:, 1:]
    src = F.one_hot(alias[:, :-1], l).float() * pair[:, :, None]
    dst = F.one_hot(alias[:, 1:], l).float()
    edges = (src.transpose(1, 2) @ dst > 0).float()  # [B, L, L]: edges[u, v] = 1 for an edge u -> v
    a_in = edges.transpose(1, 2) / edges.sum(1).clamp(min=1)[:, :, None]
    a_out = edges / edges.sum(2).clamp(min=1)[:, :, None]
    return nodes, alias, a_in, a_out


class GatedGNN(nn.Module):
    """``step`` gated graph updates: a GRU cell whose input is the mean of in- and out-neighbour messages."""

    def __init__(self, d: int, step: int):
        super().__init__()
        self.step = step
        self.edge_in, self.edge_out = nn.Linear(d, d), nn.Linear(d, d)
        self.b_iah, self.b_oah = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
        self.w_ih, self.b_ih = nn.Parameter(torch.zeros(3 * d, 2 * d)), nn.Parameter(torch.zeros(3 * d))
        self.w_hh, self.b_hh = nn.Parameter(torch.zeros(3 * d, d)), nn.Parameter(torch.zeros(3 * d))

    def forward(self, a_in: torch.Tensor, a_out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        for _ in range(self.step):
            msg = torch.cat([a_in @ self.edge_in(h) + self.b_iah, a_out @ self.edge_out(h) + self.b_oah], -1)
            i_r, i_z, i_n = F.linear(msg, self.w_ih, self.b_ih).chunk(3, -1)
            h_r, h_z, h_n = F.linear(h, self.w_hh, self.b_hh).chunk(3, -1)
            reset, update = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            new = torch.tanh(i_n + reset * h_n)
            h = new + update * (h - new)
        return h


@register_model("IDNet")
class SRGNN(TargetBPRModel):
    """The original's unused ``linear_edge_f`` is left out: a parameter without gradient breaks DDP."""

    input_type = "PREFIX"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d = config["embedding_size"]
        self.item_embedding = self.item_table(info.item_num, d)  # no padding_idx, as the original
        self.gnn = GatedGNN(d, config["step"])
        self.att_last, self.att_seq = nn.Linear(d, d), nn.Linear(d, d)
        self.att_out = nn.Linear(d, 1, bias=False)
        self.transform = nn.Linear(2 * d, d)
        bound = 1.0 / math.sqrt(d)
        for p in self.parameters():  # every parameter, embeddings included, as the original
            nn.init.uniform_(p, -bound, bound)

    def readout(self, item_seq: torch.Tensor, graph: tuple, node_emb: torch.Tensor) -> torch.Tensor:
        """The user vector [B, d] of left-padded ``item_seq`` [B, L] from its graph and initial node states."""
        _, alias, a_in, a_out = graph
        h = self.gnn(a_in, a_out, node_emb)
        seq = h.gather(1, alias[:, :, None].expand(-1, -1, h.shape[-1]))  # [B, L, d]
        last = seq[:, -1]  # left padding: the most recent real item is the last column
        alpha = self.att_out(torch.sigmoid(self.att_last(last)[:, None] + self.att_seq(seq)))  # [B, L, 1]
        pooled = (alpha * seq * (item_seq != 0)[:, :, None]).sum(1)
        return self.transform(torch.cat([pooled, last], -1))

    def context(self, batch):
        graph = session_graphs(batch[ITEMS])
        return graph[0], graph  # the nodes are looked up, not the positions

    def batch_user(self, batch, context_emb, derived):
        return self.readout(batch[ITEMS], derived, context_emb)

    def item_representations(self):
        return self.item_embedding.weight

    def user_representations(self, batch):
        graph = session_graphs(batch[ITEM_SEQ])
        return self.readout(batch[ITEM_SEQ], graph, self.item_embedding(graph[0]))
