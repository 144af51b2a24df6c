"""Shared training of models that score one target item against one sampled negative from a user vector (FM,
DSSM, LightSANs, SRGNN, ACF and their PixelNet forms): batches of PREFIX or HELD_OUT_ITEM examples,
{'items', 'target', 'negatives'} (``REC.data.training``)."""
from __future__ import annotations

import torch

from .base import RecModel, TargetRows, bpr_loss
from ..utils.batch_keys import ITEMS, NEGATIVES, TARGET


class TargetBPRModel(RecModel):
    """``forward`` is the mean BPR loss of each example's target against its negative, scored by dot product
    with the example's user vector.

    Subclasses own ``item_embedding`` and say only how the user vector comes from the batch:
    ``context(batch)`` gives the item ids whose embeddings it reads, ``batch_user(batch, context_emb, derived)``
    builds it from those embeddings. The context, the targets and the negatives are looked up in one call
    because each lookup's backward fills a dense table-sized gradient (with PixelNet covers, each lookup is a
    search of the batch's encoded items): three lookups would cost three fills per step.
    """

    def context(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, object]:
        """The [B, L] item ids the user vector reads, and whatever ``batch_user`` needs that was derived on the way
        (SRGNN's session graph, built once to find its node ids). By default: the history ``items``, nothing."""
        return batch[ITEMS], None

    def batch_user(self, batch: dict[str, torch.Tensor], context_emb: torch.Tensor, derived) -> torch.Tensor:
        """[B, d] user vectors from the batch and ``context_emb`` [B, L, d], the embeddings of ``context``'s ids."""
        raise NotImplementedError

    def target_rows(self, batch):
        """One row per example: its user vector and its target."""
        ids, derived = self.context(batch)
        user = self.batch_user(batch, self.item_embedding(ids), derived)
        return TargetRows(user, batch[TARGET], self.item_embedding, self.item_representations)

    def paper_loss(self, batch):
        ids, derived = self.context(batch)
        emb = self.item_embedding(torch.cat([ids, batch[TARGET][:, None], batch[NEGATIVES][:, None]], 1))
        user = self.batch_user(batch, emb[:, :-2], derived)
        pos, neg = (user * emb[:, -2]).sum(-1), (user * emb[:, -1]).sum(-1)
        return bpr_loss(pos, neg).mean()
