"""Full-ranking evaluation: every user against every item, history masked, as in the original.

Item representations are computed once per evaluation; each batch of users is scored on the device,
masked with index_put, cut with topk and turned into per-metric sums there. Nothing leaves the device until
the sums are reduced across ranks, which is exact: the mean of a 2-process run is the same sum divided by
the same count as a 1-process run.

Popularity buckets: each user also falls in the bucket of how often its target item occurs in the training part
(``item_counts``, lower edges ``popularity_buckets``, e.g. [0, 1, 5, 20] -> "0", "1-4", "5-19", "20+"). The
per-user metric values are scattered into per-bucket sums on the device beside the overall sums (one more
all-reduce), so the buckets partition the users and their user-weighted mean is the overall figure.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import distributed as dist
from ..utils.precision import autocast
from .metrics import get_metric
from ..utils.batch_keys import HIST_ITEM, HIST_ROW, TARGET


@dataclass(frozen=True)
class Evaluation:
    """One evaluation pass: ``metrics`` {metric@k: mean over all users} and, when popularity buckets are on,
    ``buckets`` {bucket name: {"users": n, metric@k: mean or None when n is 0}} (None when they are off)."""
    metrics: dict[str, float]
    buckets: dict[str, dict] | None = None


class FullRankingEvaluator:
    """``item_covers`` (PixelNet): this rank's share of every item's cover, in batches with ``counts`` per rank
    (``REC.data.cover_batches.ItemCoverBatches``); each evaluation encodes them once and gathers the rows.

    ``item_counts`` [item_num] (training occurrences of every item) and ``popularity_buckets`` (lower edges,
    the first 0) turn on the per-bucket figures of each ``Evaluation``."""

    def __init__(self, metrics, topk, decimals: int, device: torch.device, precision: str = "fp32",
                 item_covers=None, cover_workers: int = 0, item_counts=None, popularity_buckets=()):
        self.metric_fns = [(m.lower(), get_metric(m)) for m in metrics]
        self.topk, self.max_k = list(topk), max(topk)
        self.decimals, self.device, self.precision = decimals, device, precision
        self.keys = [f"{name}@{k}" for name, _ in self.metric_fns for k in self.topk]
        self.item_covers, self.cover_workers = item_covers, cover_workers
        self.cover_seconds: list[float] = []
        edges = list(popularity_buckets) if item_counts is not None else []
        self.bucket_names = bucket_names(edges)
        # bucket of every item by its training count: edges[j] <= count < edges[j + 1]
        self.item_bucket = torch.from_numpy(
            np.searchsorted(np.asarray(edges), np.asarray(item_counts), side="right") - 1).to(device) \
            if edges else None

    def encode_all_covers(self, model) -> torch.Tensor:
        """[item_num, d] float32: row 0 (padding) zero, then every item's encoded cover."""
        t0 = time.perf_counter()
        local = model.encode_item_batches(self.item_covers, self.device, self.precision, self.cover_workers)
        if dist.rank() == 0:  # rank 0 holds the padding row
            local = torch.cat([torch.zeros(1, model.cover_width, device=self.device), local])
        counts = list(self.item_covers.counts)
        counts[0] += 1  # rank 0 holds the padding row
        table = dist.all_gather_rows(local, counts)
        self.cover_seconds.append(time.perf_counter() - t0)
        return table

    @torch.no_grad()
    def evaluate(self, model, batches) -> Evaluation:
        """Mean of every metric@k over all users of all ranks (and per bucket), rounded to ``decimals``."""
        was_training = model.training
        model.eval()
        try:
            with contextlib.ExitStack() as scope:
                if self.item_covers is not None:
                    table = self.encode_all_covers(model)
                    with autocast(self.device, self.precision):  # the mask token's image is encoded on entry
                        scope.enter_context(model.cover_table(table))
                return self._rank_users(model, batches)
        finally:
            model.train(was_training)

    def _rank_users(self, model, batches) -> Evaluation:
        with autocast(self.device, self.precision):
            items = model.item_representations()
        items = items.float()
        n_rows = 1 + (len(self.bucket_names) if self.item_bucket is not None else 0)
        table = torch.zeros(n_rows, len(self.keys) + 1, dtype=torch.float64, device=self.device)
        for batch, scores in score_batches(model, items, batches, self.device, self.precision):
            table += self.batch_sums(scores, batch)
            del batch, scores  # before the next batch is scored: one [B, items] matrix alive, not two
        sums = table[0, :-1].contiguous()
        count = torch.tensor([float(batches.n_users)], dtype=torch.float64, device=self.device)
        dist.all_reduce_sum(sums)
        dist.all_reduce_sum(count)
        means = (sums / count.clamp(min=1)).tolist()
        buckets = None if n_rows == 1 else self._bucket_means(table[1:].contiguous())
        return Evaluation({key: round(v, self.decimals) for key, v in zip(self.keys, means)}, buckets)

    def _bucket_means(self, bucket_sums: torch.Tensor) -> dict[str, dict]:
        dist.all_reduce_sum(bucket_sums)
        out = {}
        for name, row in zip(self.bucket_names, bucket_sums.tolist()):
            n = int(round(row[-1]))
            out[name] = {"users": n, **{key: round(v / n, self.decimals) if n else None
                                        for key, v in zip(self.keys, row[:-1])}}
        return out

    def batch_sums(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[1 + buckets, len(keys) + 1] float64: row 0 the per-metric sums over this batch's users, then one row
        per popularity bucket (none when they are off) with the sums over its users; the last column counts the
        users. Row 0 is computed exactly as without buckets, so the overall figures do not depend on them."""
        values = self.user_values(scores, batch)
        n = torch.full((), float(len(batch[TARGET])), dtype=torch.float64, device=scores.device)
        overall = torch.stack([*(v.sum() for v in values), n])[None]
        if self.item_bucket is None:
            return overall
        per_user = torch.stack([*values, torch.ones_like(values[0])], 1)
        buckets = torch.zeros(len(self.bucket_names), per_user.shape[1], dtype=torch.float64, device=scores.device)
        buckets.index_add_(0, self.item_bucket[batch[TARGET]], per_user)
        return torch.cat([overall, buckets])

    def user_values(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Every metric@k of every user of this batch, [U] float64 each, in the order of ``keys``. A target that
        repeats a history item is masked too and can never be hit, as in the original."""
        top, _, ranked = top_unmasked(scores, self.max_k, batch[HIST_ROW], batch[HIST_ITEM])
        hits = (top == batch[TARGET][:, None]) & ranked
        n_pos = torch.ones(len(hits), device=hits.device)
        return [fn(hits, n_pos, k) for _, fn in self.metric_fns for k in self.topk]


def score_batches(model, items: torch.Tensor, batches, device: torch.device, precision: str):
    """Per batch of users (``REC.data.EvalBatches``): (the batch on ``device``, float32 scores [B, item_num] of
    every item). The one scoring loop of evaluation and of ``REC.app.predict``, so both rank alike: the user side
    under autocast, the dot products in fp32 against ``items`` (float32 [item_num, d])."""
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, precision):
            users = model.user_representations(batch)
        yield batch, model.score(users.float(), items).float()


def top_unmasked(scores: torch.Tensor, k: int, hist_row: torch.Tensor | None = None,
                 hist_item: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask the padding column and each user's history (``scores[hist_row, hist_item]``, skipped when None) in
    place, then take the k best: (item ids [U, k], scores [U, k], ranked [U, k]). ``ranked`` is False where fewer
    than k items were left unmasked: topk then fills the row with masked items, which must be neither a hit nor a
    recommendation (a user with 3 history items out of 5 would otherwise "hit" a history item at k=5)."""
    scores[:, 0] = -torch.inf
    if hist_row is not None:
        scores[hist_row, hist_item] = -torch.inf
    top = scores.topk(k, dim=1)
    return top.indices, top.values, torch.isfinite(top.values)


def bucket_names(edges) -> list[str]:
    """Names of the buckets with these lower edges: [0, 1, 5, 20] -> ["0", "1-4", "5-19", "20+"]."""
    names = []
    for j, lo in enumerate(edges):
        hi = edges[j + 1] - 1 if j + 1 < len(edges) else None
        names.append(f"{lo}+" if hi is None else str(lo) if hi == lo else f"{lo}-{hi}")
    return names


def format_buckets(buckets: dict[str, dict]) -> str:
    """A table of ``Evaluation.buckets``: one row per bucket, its user count and metrics."""
    keys = [k for k in next(iter(buckets.values())) if k != "users"]
    width = max(10, *(len(k) + 2 for k in keys))
    lines = [f"  {'bucket':>8} {'users':>9}" + "".join(f"{k:>{width}}" for k in keys)]
    for name, row in buckets.items():
        cells = "".join(f"{'-' if row[k] is None else f'{row[k]:.4f}':>{width}}" for k in keys)
        lines.append(f"  {name:>8} {row['users']:>9}" + cells)
    return "\n".join(lines)

