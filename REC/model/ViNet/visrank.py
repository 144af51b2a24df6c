"""VisRank: content-based ranking by visual similarity, no training.

The score of an item is the mean of its ``k`` highest cosine similarities to the user's last ``history_limit``
history items (``maximum``: k = 1; ``average_top_k``: k = min(top_num, history length); ``average``: all of them).

Differences from the original, deliberate: it evaluates any number of users per batch (the original needs
``eval_batch_size: 1``), with the similarity tensor built in item chunks of bounded size; the history is the
full history of the evaluation batch (``hist_row``/``hist_item``), as the original, not the M-item model input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base import DatasetInfo, RecModel
from ..registry import register_model
from .feature_table import feature_table_from_config
from ...utils.batch_keys import HIST_ITEM, HIST_ROW, USER_ID

CHUNK_ELEMENTS = 1 << 24  # similarities held at once per score call (64 MiB in fp32), whatever B and item_num


@register_model("ViNet")
class VisRank(RecModel):
    input_type = None  # evaluated as built: no training examples, no epoch

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        self.features = feature_table_from_config(config, info)
        # top_num and history_limit are at least 1: declared in visrank.yaml, checked with the config
        self.method, self.top_num, self.history_limit = config["method"], config["top_num"], config["history_limit"]

    def paper_loss(self, batch):
        raise RuntimeError("VisRank is not trained")

    def item_representations(self):
        """[item_num, D + 1]: unit-norm features, then an additive score column (-inf for the padding item 0)."""
        table = F.normalize(self.features.table.float(), dim=-1)
        bias = torch.zeros(len(table), 1, device=table.device)
        bias[0] = -torch.inf
        return torch.cat([table, bias], 1)

    def history(self, batch) -> torch.Tensor:
        """[B, L] the last ``history_limit`` items of each user's full history, left-padded with 0.

        ``hist_row`` lists each row's items contiguously and in time order (as EvalBatches yields them)."""
        rows, items = batch[HIST_ROW], batch[HIST_ITEM]
        n_users = len(batch[USER_ID])
        counts = torch.bincount(rows, minlength=n_users)
        width = max(1, min(self.history_limit, int(counts.max()) if len(rows) else 0))
        from_end = (torch.cumsum(counts, 0) - 1)[rows] - torch.arange(len(rows), device=rows.device)  # 0 = newest
        keep = from_end < width
        out = torch.zeros(n_users, width, dtype=items.dtype, device=items.device)
        out[rows[keep], width - 1 - from_end[keep]] = items[keep]
        return out

    def user_representations(self, batch):
        """[B, L, D + 1]: unit-norm features of the kept history items, then a column that is 1 for a real item
        and 0 for padding."""
        hist = self.history(batch)
        feats = F.normalize(self.features(hist).float(), dim=-1)
        real = (hist != 0).to(feats.dtype)[..., None]
        return torch.cat([feats * real, real], -1)

    def score(self, users, items):
        feats, real = users[..., :-1], users[..., -1] > 0
        table, bias = items[:, :-1], items[:, -1]
        n_users, width = real.shape
        n_real = real.sum(1)
        k = {"maximum": 1, "average_top_k": self.top_num}.get(self.method, width)
        k_user = torch.clamp(n_real, max=k)[:, None]  # similarities averaged per user
        divisor = k_user.clamp(min=1).to(feats.dtype)  # a user without history scores 0 everywhere
        top = min(k, width)
        flat = feats.reshape(n_users * width, -1)
        out = torch.empty(n_users, len(table), device=users.device)
        step = max(1, CHUNK_ELEMENTS // (n_users * width))
        for a in range(0, len(table), step):
            sims = (flat @ table[a:a + step].T).view(n_users, width, -1)
            if self.method == "average":
                value = (sims * real[:, :, None]).sum(1)
            elif top == 1:  # maximum (or top_num 1): a user without history keeps 0, not -inf
                value = sims.masked_fill(~real[:, :, None], -torch.inf).amax(1).masked_fill(k_user == 0, 0.0)
            else:
                best = sims.masked_fill(~real[:, :, None], -torch.inf).topk(top, dim=1).values  # [B, top, chunk]
                used = torch.arange(top, device=users.device)[None, :] < k_user
                value = torch.where(used[:, :, None], best, 0.0).sum(1)
            out[:, a:a + step] = value / divisor + bias[a:a + step]
        return out
