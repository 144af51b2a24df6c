"""Shared negatives for a many-negative objective, drawn in the data pipeline.

``sampled_softmax`` scores every target row of a step against the same ``num_negatives`` extra items. They are
drawn here, as part of the batch, rather than on the device inside the loss, for one reason: a PixelNet batch must
carry the covers (or stored prefix rows) of every item the step scores, and ``BatchesWithCovers`` fetches those
for the ids under the batch's ``item_keys``. Declaring the shared negatives as one more item key makes their covers
part of the step's distinct set, each encoded once, through the frozen-prefix store when it is on.

The draw of batch ``b`` in epoch ``e`` comes from a generator seeded by (seed, e, b) only, not the rank, so every
process of a DDP run draws the same ids at the same step, and one process with the whole global batch draws them
too: 2 processes with batch B train like 1 with batch 2B. A resumed run replays the same draws.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

STREAM = 0x5EED_4E47  # first word of the seed: keeps these draws apart from the batches' own streams


class SharedNegativeBatches(Dataset):
    """A training-batch dataset plus ``key``: int64 [count] ids drawn with probabilities ``distribution``
    (float [item_num], zero for padding and for any item that must never be a candidate)."""

    def __init__(self, batches, distribution: np.ndarray, count: int, seed: int, key: str):
        q = np.asarray(distribution, dtype=np.float64)
        if q.ndim != 1 or not np.isfinite(q).all() or (q < 0).any() or q.sum() <= 0:
            raise ValueError(f"shared negatives: the distribution must be non-negative and finite with a positive "
                             f"sum over {len(q)} items")
        if count < 1:
            raise ValueError(f"shared negatives: count must be at least 1, got {count}")
        self.batches, self.count, self.seed, self.key = batches, int(count), int(seed), key
        self.cdf = np.cumsum(q)
        self.last = int(np.flatnonzero(q)[-1])  # a draw rounded up to the total lands on a drawable item
        self.item_keys = (*batches.item_keys, key)  # PixelNet fetches the covers of these ids too
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def draw(self, b: int) -> np.ndarray:
        """The shared negatives of batch ``b`` of the current epoch. Inverse-CDF draws: an item of probability 0
        spans an empty interval and is never drawn; O(count log item_num), whatever the catalogue size."""
        u = np.random.default_rng([STREAM, self.seed, self.epoch, b]).random(self.count) * self.cdf[-1]
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), self.last)

    def __getitem__(self, b: int) -> dict[str, torch.Tensor]:
        batch = self.batches[b]
        batch[self.key] = torch.from_numpy(self.draw(b).astype(np.int64))
        return batch
