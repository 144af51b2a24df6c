"""Full-ranking evaluation: every user against every item, history masked (spec 4.1).

Item representations are computed once per evaluation; each batch of users is scored on the device,
masked with index_put, cut with topk and turned into per-metric sums there. Nothing leaves the device until
the sums are reduced across ranks, which is exact: the mean of a 2-process run is the same sum divided by
the same count as a 1-process run.
"""
from __future__ import annotations

import contextlib
import time

import torch

from .. import distributed as dist
from .metrics import get_metric


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


class FullRankingEvaluator:
    """``item_covers`` (PixelNet): this rank's share of every item's cover, in batches with ``counts`` per rank
    (``REC.data.cover_batches.ItemCoverBatches``); each evaluation encodes them once and gathers the rows."""

    def __init__(self, metrics, topk, decimals: int, device: torch.device, precision: str = "fp32",
                 item_covers=None, cover_workers: int = 0):
        self.metric_fns = [(m.lower(), get_metric(m)) for m in metrics]
        self.topk, self.max_k = list(topk), max(topk)
        self.decimals, self.device, self.precision = decimals, device, precision
        self.keys = [f"{name}@{k}" for name, _ in self.metric_fns for k in self.topk]
        self.item_covers, self.cover_workers = item_covers, cover_workers
        self.cover_seconds: list[float] = []

    def encode_all_covers(self, model) -> torch.Tensor:
        """[item_num, d] float32: row 0 (padding) zero, then every item's encoded cover."""
        loader = torch.utils.data.DataLoader(self.item_covers, batch_size=None, num_workers=self.cover_workers,
                                             pin_memory=self.device.type == "cuda")
        t0 = time.perf_counter()
        parts = [torch.zeros(1, model.cover_width, device=self.device)] if dist.rank() == 0 else []
        for covers in loader:
            with autocast(self.device, self.precision):
                parts.append(model.encode_covers(covers.to(self.device, non_blocking=True)).float())
        local = torch.cat(parts) if parts else torch.zeros(0, model.cover_width, device=self.device)
        counts = list(self.item_covers.counts)
        counts[0] += 1  # rank 0 holds the padding row
        table = dist.all_gather_rows(local, counts)
        self.cover_seconds.append(time.perf_counter() - t0)
        return table

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        """Mean of every metric@k over all users of all ranks, rounded to ``decimals``."""
        was_training = model.training
        model.eval()
        if self.item_covers is not None:
            table = self.encode_all_covers(model)
            with autocast(self.device, self.precision):
                model.use_cover_table(table)
        try:
            return self._rank_users(model, batches)
        finally:
            if self.item_covers is not None:
                model.use_cover_table(None)
            model.train(was_training)

    def _rank_users(self, model, batches) -> dict[str, float]:
        with autocast(self.device, self.precision):
            items = model.item_representations()
        items = items.float()
        sums = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        for batch in batches:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast(self.device, self.precision):
                users = model.user_representations(batch)
            scores = model.score(users.float(), items).float()
            sums += self.batch_sums(scores, batch)
        count = torch.tensor([float(batches.n_users)], dtype=torch.float64, device=self.device)
        dist.all_reduce_sum(sums)
        dist.all_reduce_sum(count)
        means = (sums / count.clamp(min=1)).tolist()
        return {key: round(v, self.decimals) for key, v in zip(self.keys, means)}

    def batch_sums(self, scores: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-metric sums over this batch's users. A target that repeats a history item is masked too and
        can never be hit, as in the original (spec 9.5)."""
        scores[:, 0] = -torch.inf
        scores[batch["hist_row"], batch["hist_item"]] = -torch.inf
        top = scores.topk(self.max_k, dim=1).indices
        hits = top == batch["target"][:, None]
        n_pos = torch.ones(len(hits), device=hits.device)
        return torch.stack([fn(hits, n_pos, k).sum() for _, fn in self.metric_fns for k in self.topk])

