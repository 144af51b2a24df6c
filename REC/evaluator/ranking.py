"""Full-ranking evaluation: every user against every item, history masked (spec 4.1).

Item representations are computed once per evaluation; each batch of users is scored on the device,
masked with index_put, cut with topk and turned into per-metric sums there. Nothing leaves the device until
the sums are reduced across ranks, which is exact: the mean of a 2-process run is the same sum divided by
the same count as a 1-process run.
"""
from __future__ import annotations

import contextlib

import torch

from .. import distributed as dist
from .metrics import get_metric


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


class FullRankingEvaluator:
    def __init__(self, metrics, topk, decimals: int, device: torch.device, precision: str = "fp32"):
        self.metric_fns = [(m.lower(), get_metric(m)) for m in metrics]
        self.topk, self.max_k = list(topk), max(topk)
        self.decimals, self.device, self.precision = decimals, device, precision
        self.keys = [f"{name}@{k}" for name, _ in self.metric_fns for k in self.topk]

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, float]:
        """Mean of every metric@k over all users of all ranks, rounded to ``decimals``."""
        was_training = model.training
        model.eval()
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
        model.train(was_training)
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

