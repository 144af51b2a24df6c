"""BERT4Rec (Sun et al., CIKM 2019) with item-ID embeddings, as PixelRec trains it.

Cloze training: the MASKED batches (``REC.data.training.masked``) replace random items of a chunk by the mask
token; each masked position predicts its item against one sampled negative (BPR). At evaluation the mask token
is appended after the history and its output is the user vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import DatasetInfo, RecModel, TargetRows, bpr_loss
from ..layers import Dropout, TransformerEncoder, init_normal_
from ..registry import register_model
from ...utils.batch_keys import ITEMS, ITEM_SEQ, MASKED_ITEMS, NEGATIVES, TARGET_MASK


def key_padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] bool, True where a position may attend: every non-padding position (the mask token included)."""
    b, l = ids.shape
    return (ids != 0)[:, None, None, :].expand(b, 1, l, l)


@register_model("IDNet")
class BERT4Rec(RecModel):
    input_type = "MASKED"

    def __init__(self, config, info: DatasetInfo):
        super().__init__(config, info)
        d, self.max_len = config["embedding_size"], config["MAX_ITEM_LIST_LENGTH"]
        self.mask_token = info.item_num  # the extra last row; the dataset uses the same id (split.item_num)
        self.item_embedding = self.item_table(info.item_num + 1, d, padding_idx=0)
        self.position_embedding = nn.Embedding(self.max_len + 1, d)
        self.input_norm = nn.LayerNorm(d, eps=config["layer_norm_eps"])
        self.input_dropout = Dropout(config["hidden_dropout_prob"])
        self.encoder = TransformerEncoder.from_config(config)
        std = config["initializer_range"]
        self.apply(lambda m: init_normal_(m, std))

    def encode(self, ids: torch.Tensor, item_emb: torch.Tensor | None = None,
               last_only: bool = False) -> torch.Tensor:
        """[B, M+1] left-padded ids (mask tokens allowed) -> [B, M+1, d] ([B, 1, d] with ``last_only``)."""
        if item_emb is None:
            item_emb = self.item_embedding(ids)
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.input_dropout(self.input_norm(item_emb + self.position_embedding(positions)))
        return self.encoder(x, key_padding_mask(ids), last_only)

    def paper_loss(self, batch):
        masked_items, items, negatives = batch[MASKED_ITEMS], batch[ITEMS], batch[NEGATIVES]
        emb = self.item_embedding(torch.stack([masked_items, items, negatives], 1))  # one lookup, one table gradient
        hidden = self.encode(masked_items, emb[:, 0])
        pos = (hidden * emb[:, 1]).sum(-1)
        neg = (hidden * emb[:, 2]).sum(-1)
        is_masked = batch[TARGET_MASK].float()  # the masked positions, the only ones with a target
        # Sum over every masked position of the batch, divided by the number of sequences (the original's
        # normalisation), not by the number of masked positions.
        return (bpr_loss(pos, neg) * is_masked).sum() / items.shape[0]

    def target_rows(self, batch):
        """The masked positions: their hidden states and the items they hid."""
        hidden = self.encode(batch[MASKED_ITEMS])
        is_masked = batch[TARGET_MASK]
        return TargetRows(hidden[is_masked], batch[ITEMS][is_masked], self.item_embedding,
                          self.item_representations)

    def item_representations(self):
        return self.item_embedding.weight[:self.item_num]

    def user_representations(self, batch):
        """The history (its last M items, left-padded to M) followed by the mask token, which thus sits in
        position slot M as the last item of a training chunk does; its output is the user vector."""
        item_seq = batch[ITEM_SEQ][:, -self.max_len:]
        item_seq = F.pad(item_seq, (self.max_len - item_seq.shape[1], 0))
        mask = torch.full((item_seq.shape[0], 1), self.mask_token, dtype=item_seq.dtype, device=item_seq.device)
        return self.encode(torch.cat([item_seq, mask], 1), last_only=True)[:, -1]
