"""PixelNet items: every item is its cover image passed through a trainable image encoder.

``CoverItems`` stands in for an ID model's ``nn.Embedding``: ``items(ids)`` gives vectors and ``items.weight``
the whole table, so a PixelNet model is its IDNet model with this module in place of the ID table
(``PixelItems``), and the recommender code is shared, not copied.

- Training: the batch carries the covers of its distinct items (``cover_ids`` ascending, uint8 ``covers``).
  They are encoded once per step and every id of the batch is looked up among them; an id that is not there
  raises ``MissingCoverError``.
- Evaluation and prediction: every item's cover is encoded (``encode_item_batches``) and the table is lent to
  the model for a scope (``with model.cover_table(table):``); lookups then index it.

Which source lookups read (this step's covers, or the whole table) is set only by those two context managers,
so it can never outlive the step or the evaluation that set it.
- Frozen-prefix store (``encoder_cache``): batches then carry ``cover_prefix``, the stored output of the
  encoder's frozen front for each distinct item, instead of ``covers``, and only the trainable rest runs.

Padding (id 0) is a zero vector; the original encoded a blank grey image instead, which only ever
reaches masked positions. BERT4Rec's mask token is the encoder's output for the all-ones image, as the original.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.precision import autocast
from ..utils.batch_keys import COVERS, COVER_IDS, COVER_PREFIX

HALF_NORM = (0.5, 0.5, 0.5)  # the original normalised every encoder's input to [-1, 1]


class MissingCoverError(RuntimeError):
    """A training lookup named an item whose cover the batch does not carry: the batch key holding it is not in
    its dataset's ``item_keys`` (``REC.data.training``), so ``BatchesWithCovers`` fetched no cover for it."""

    def __init__(self, item_id: int, misses: int, keys: tuple[str, ...] = ()):
        self.item_id, self.misses, self.keys = item_id, misses, keys
        where = f" (found under batch key {', '.join(map(repr, keys))})" if keys else ""
        super().__init__(f"item id {item_id}{where} has no cover in this training batch ({misses} lookups missed); "
                         f"every batch key that holds item ids must be in the training dataset's item_keys")


@dataclass(frozen=True)
class PrefixPlan:
    """Whether this run stores the encoder's frozen prefix per item (``encoder_cache``) and why; ``changes`` lists
    what makes the prefix differ in training mode from its stored (evaluation-mode) output, empty when exact."""

    use: bool
    reason: str
    frozen_units: int | None = None
    changes: tuple[str, ...] = ()


class CoverItems(nn.Module):
    def __init__(self, config, d: int, mask_id: int | None = None, encoder: nn.Module | None = None,
                 shapes_only: bool = False):
        super().__init__()
        from .encoders import build_item_encoder  # timm and open_clip load only when a pixel model is built

        # the attribute name puts the encoder (and its head) in the default encoder_modules, the "modal" group
        self.visual_encoder = encoder if encoder is not None else build_item_encoder(config, d, shapes_only)
        self.embedding_dim, self.mask_id = d, mask_id
        self.resize_to = config["image_size"] or self.visual_encoder.input_size
        self.cover_size = (self.resize_to, self.resize_to)
        native = config["image_norm"] == "native"
        mean = self.visual_encoder.mean if native else HALF_NORM
        std = self.visual_encoder.std if native else HALF_NORM
        # plain floats, not buffers: DDP would broadcast every buffer from rank 0 before each forward
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self._norm_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._ids = self._rows = self._table = None

    def pixels(self, covers: torch.Tensor) -> torch.Tensor:
        """uint8 [n, 3, h, w] -> normalised float [n, 3, S, S]; covers stored at another size than S (``image_size``,
        else the encoder's native input size) are resized on the device."""
        x = covers.float().div_(255.0)
        if x.shape[-2:] != self.cover_size:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False,
                              antialias=True)
        if x.device not in self._norm_on:
            self._norm_on[x.device] = tuple(torch.tensor(v, device=x.device).view(1, 3, 1, 1)
                                            for v in (self.mean, self.std))
        mean, std = self._norm_on[x.device]
        return (x - mean) / std  # the encoder moves it to channels-last where that helps

    def mask_image(self, device) -> torch.Tensor:
        """BERT4Rec's mask token image: ones in normalised space, as the original."""
        return torch.ones(1, 3, *self.cover_size, device=device)

    def _encode(self, inputs: dict[str, torch.Tensor], with_mask: bool) -> torch.Tensor:
        if COVER_PREFIX in inputs:  # stored frozen-prefix rows: only the trainable rest runs
            x = inputs[COVER_PREFIX]
            if with_mask:
                with torch.no_grad():
                    mask = self.visual_encoder.prefix(self.mask_image(x.device))
                x = torch.cat([x, mask.to(x.dtype)])
            return self.visual_encoder.from_prefix(x)
        x = self.pixels(inputs[COVERS])
        if with_mask:  # encoded with the batch: one encoder call per step
            x = torch.cat([x, self.mask_image(x.device)])
        return self.visual_encoder(x)

    def encode(self, covers: torch.Tensor) -> torch.Tensor:
        """[n, d] item vectors of uint8 covers [n, 3, h, w]."""
        return self._encode({COVERS: covers}, False)

    def encode_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[n, d] item vectors of a batch of items given by their covers or their stored prefix rows."""
        return self._encode(inputs, False)

    # ------------------------------------------------------------------------- frozen-prefix store
    def prefix_plan(self, setting: str) -> PrefixPlan:
        """What ``encoder_cache: setting`` means for this encoder: auto stores the prefix exactly where that
        changes nothing; on also where it changes something (with a warning); off never."""
        frozen = getattr(self.visual_encoder, "frozen_units", None)
        adaptation = getattr(self.visual_encoder, "adaptation", "blocks")
        whole = getattr(self.visual_encoder, "requires_store", False)  # frozen, side: the whole encoder is frozen
        if setting == "off":
            return PrefixPlan(False, "encoder_cache is off" + (
                f" (adaptation {adaptation}: the frozen encoder then runs at every step, in evaluation mode)"
                if whole else ""))
        if whole:  # the rung is defined by its store: the state is exact (evaluation mode)
            return PrefixPlan(True, f"adaptation {adaptation}: the whole encoder is frozen", frozen)
        if frozen is None:
            return PrefixPlan(False, "the encoder has no frozen front to store (its stem trains, or it cannot be cut "
                                     "at its blocks)")
        changes = tuple(self.visual_encoder.prefix_randomness())
        if changes and setting == "auto":
            return PrefixPlan(False, f"its frozen part is not deterministic in training mode ({', '.join(changes)}); "
                                     f"encoder_cache: on stores it anyway, computed in evaluation mode",
                              frozen, changes)
        return PrefixPlan(True, f"the stem and the first {frozen} blocks are frozen", frozen, changes)

    @torch.no_grad()
    def prefix_of_covers(self, covers: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output for uint8 covers: what the store holds per item."""
        return self.visual_encoder.prefix(self.pixels(covers))

    def prefix_description(self) -> dict:
        """Everything the stored prefix depends on, for the store's key; the frozen weights enter by their hash,
        so pretrained files, hub weights and seeded random ones are told apart alike."""
        enc = self.visual_encoder
        # frozen and side store other states than the frozen front; lora's front is the blocks rung's, shared
        rung = {"adaptation": enc.adaptation, "readout": enc.readout} if getattr(enc, "requires_store", False) else {}
        return dict(encoder=enc.name, frozen_units=enc.frozen_units, weights=enc.prefix_digest(),
                    cover_size=list(self.cover_size), mean=list(self.mean), std=list(self.std), **rung)

    @contextmanager
    def batch_source(self, cover_ids: torch.Tensor, inputs: dict[str, torch.Tensor]):
        """Within the scope, lookups read this step's items: ``cover_ids`` ascending, their covers or stored prefix
        rows in ``inputs``, encoded once here (with the mask token's image, for BERT4Rec)."""
        rows = self._encode(inputs, self.mask_id is not None)
        ids = [cover_ids.new_zeros(1), cover_ids]
        if self.mask_id is not None:
            ids.append(cover_ids.new_full((1,), self.mask_id))
        self._ids, self._rows = torch.cat(ids), torch.cat([rows.new_zeros(1, rows.shape[1]), rows])
        try:
            yield self
        finally:
            self._ids = self._rows = None

    @contextmanager
    def table_source(self, table: torch.Tensor):
        """Within the scope, lookups index ``table`` [item_num, d], every item's vector (row 0 padding)."""
        if self.mask_id is not None:
            table = torch.cat([table, self.visual_encoder(self.mask_image(table.device)).to(table.dtype)])
        self._table = table
        try:
            yield self
        finally:
            self._table = None

    @property
    def weight(self) -> torch.Tensor:
        if self._table is None:
            raise RuntimeError("no item table: encode every cover and look items up inside "
                               "`with model.cover_table(table):` (as FullRankingEvaluator and REC.app.predict do)")
        return self._table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._rows is not None:  # training step: look up among the batch's distinct items
            pos = torch.searchsorted(self._ids, ids.contiguous()).clamp_(max=len(self._ids) - 1)
            missed = self._ids[pos] != ids
            # An id outside the batch's covers would otherwise read its neighbour's row and train on the wrong
            # cover. The check costs one host sync per lookup, and every model makes one lookup per step.
            if missed.any():
                raise MissingCoverError(int(ids[missed][0]), int(missed.sum()))
            return self._rows[pos]
        return self.weight[ids]


class PixelItems:
    """Mixin that turns an ID model into its PixelNet form: ``class MOSASRec(PixelItems, SASRec)``.

    The ID model builds its item table through ``item_table``; here that returns a placeholder on the meta
    device (no memory; the ID model's initialisation runs on it for nothing), which is then replaced by
    ``CoverItems`` of the same width. A table with one row more than the items (BERT4Rec) gets a mask token.
    """

    encodes_covers = True

    def item_table(self, num: int, d: int, **kwargs) -> nn.Module:
        return nn.Embedding(num, d, device="meta", **kwargs)

    def __init__(self, config, info):
        super().__init__(config, info)
        placeholder = self.item_embedding
        mask_id = info.item_num if placeholder.num_embeddings > info.item_num else None
        self.item_embedding = self.cover_items(config, info, placeholder.embedding_dim, mask_id)

    def cover_items(self, config, info, d: int, mask_id: int | None) -> nn.Module:
        """The module in place of the ID table: ``CoverItems`` over the configured encoder, unless a model
        (DVBPR) brings its own; it must offer CoverItems' methods."""
        return CoverItems(config, d, mask_id, shapes_only=info.shapes_only)

    def forward(self, batch):
        inputs = {k: batch[k] for k in (COVERS, COVER_PREFIX) if k in batch}
        try:
            with self.item_embedding.batch_source(batch[COVER_IDS], inputs):
                return super().forward(batch)
        except MissingCoverError as exc:  # name the batch keys that hold the id (slow path: the run stops here)
            # a bool key (target_mask) holds no ids: its True would equal id 1
            keys = tuple(k for k, v in batch.items()
                         if k not in (COVER_IDS, COVERS, COVER_PREFIX) and v.dtype != torch.bool
                         and (v == exc.item_id).any())
            raise MissingCoverError(exc.item_id, exc.misses, keys) from None

    @property
    def cover_width(self) -> int:
        return self.item_embedding.embedding_dim

    def encode_covers(self, covers: torch.Tensor) -> torch.Tensor:
        return self.item_embedding.encode(covers)

    def encode_items(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Item vectors from ``{"covers": uint8 [n, 3, h, w]}`` or ``{"cover_prefix": stored prefix rows}``."""
        return self.item_embedding.encode_items(inputs)

    @torch.no_grad()
    def encode_item_batches(self, batches, device: torch.device, precision: str, workers: int = 0) -> torch.Tensor:
        """float32 [n, d]: the vectors of every item in ``batches`` (``REC.data.cover_batches.ItemCoverBatches``,
        covers or stored prefix rows), in order; the caller sets evaluation mode. Evaluation gathers the shards
        of all ranks; prediction encodes all items in one process."""
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        rows = [torch.zeros(0, self.cover_width, device=device)]
        for inputs in loader:
            inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
            with autocast(device, precision):
                rows.append(self.encode_items(inputs).float())
        return torch.cat(rows)

    @property
    def cover_items_module(self) -> CoverItems:
        """The CoverItems inside the item table (DVBPR wraps it beside an ID table)."""
        module = self.item_embedding
        return module if isinstance(module, CoverItems) else module.covers

    def cover_table(self, table: torch.Tensor):
        """``with model.cover_table(table):`` item lookups index ``table`` [item_num, d] (every item's encoded
        cover, row 0 padding) inside the scope; evaluation and prediction rank users there."""
        return self.item_embedding.table_source(table)
