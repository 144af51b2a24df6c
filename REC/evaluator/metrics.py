"""Top-k ranking metrics as pure tensor functions.

Each takes ``hits`` [U, K] (1 where the item ranked j+1 is a positive, K = the largest cut-off), ``n_pos`` [U]
(positives per user, 1 under leave-one-out) and a cut-off k, and returns the per-user value [U] in float64.
Summing these and dividing by the user count gives the reported mean, which keeps multi-process results
exact: every rank reduces sums and counts, never means.
"""
from __future__ import annotations

import torch

from ..utils.registry import Registry

# name -> fn(hits, n_pos, k) -> per-user values; ``metrics: [ndcg]`` and ``[NDCG]`` are the same metric
METRICS = Registry("metric", error=ValueError, fold_case=True)
register_metric = METRICS.register
get_metric = METRICS.get


def _gains(k: int, device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


@register_metric("Hit")
def hit(hits, n_pos, k):
    return (hits[:, :k].sum(1) > 0).double()


@register_metric("Recall")
def recall(hits, n_pos, k):
    return hits[:, :k].double().sum(1) / n_pos.double().clamp(min=1)


@register_metric("Precision")
def precision(hits, n_pos, k):
    return hits[:, :k].double().sum(1) / k


@register_metric("MRR")
def mrr(hits, n_pos, k):
    h = hits[:, :k].double()
    first = h.argmax(1)  # index of the first hit (0 when none, masked below)
    return torch.where(h.sum(1) > 0, 1.0 / (first.double() + 1.0), torch.zeros_like(first, dtype=torch.float64))


@register_metric("NDCG")
def ndcg(hits, n_pos, k):
    gains = _gains(k, hits.device)
    dcg = (hits[:, :k].double() * gains).sum(1)
    ideal_len = n_pos.clamp(max=k).long()  # the ideal list holds min(P, k) positives
    idcg = torch.cumsum(gains, 0)[(ideal_len - 1).clamp(min=0)]
    return torch.where(ideal_len > 0, dcg / idcg, torch.zeros_like(dcg))


@register_metric("MAP")
def average_precision(hits, n_pos, k):
    h = hits[:, :k].double()
    prec_at_j = torch.cumsum(h, 1) / torch.arange(1, k + 1, device=h.device, dtype=torch.float64)
    denom = n_pos.double().clamp(max=k).clamp(min=1)
    return (h * prec_at_j).sum(1) / denom
