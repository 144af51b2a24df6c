"""The one interface the trainer and the evaluator know models by."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils.errors import UserError
from ..utils.batch_keys import SHARED_NEGATIVES


class DatasetInfo:
    """What a model may know about the data: table sizes (row 0 of each is padding) and, for models built
    on the training interactions (popularity, graphs), the training (user, item) pairs.

    ``shapes_only``: the model is built on the meta device to check its shapes before any process starts
    (``create_model`` enters that device), so it must read no pretrained weights and no feature file contents."""

    def __init__(self, item_num: int, user_num: int, train_items: np.ndarray | None = None,
                 train_groups: tuple[np.ndarray, np.ndarray] | None = None, shapes_only: bool = False,
                 negative_pool: np.ndarray | None = None, item_ids: str | None = None):
        """``train_items`` [n] grouped by user, ``train_groups`` (users [u], offsets [u + 1]) saying whose they are:
        the split's own compact form (``Split.train_users`` / ``train_indptr``). ``negative_pool``: the items a
        training negative may be (``Split.negative_pool()``: all but a cold-start protocol's held-out items;
        None for every item). ``item_ids``: the identity of the run's item order (``TokenTable.digest()``), which
        a per-item file made for another dataset (or another version of it) does not have."""
        self.item_num, self.user_num, self.train_items = item_num, user_num, train_items
        self.item_ids = item_ids
        self._train_groups = train_groups
        self.shapes_only = shapes_only
        self.negative_pool = negative_pool

    @classmethod
    def from_split(cls, split, shapes_only: bool = False, item_ids: str | None = None) -> "DatasetInfo":
        return cls(split.item_num, split.user_num, train_items=split.train_items,
                   train_groups=(split.train_users, split.train_indptr), shapes_only=shapes_only,
                   negative_pool=split.negative_pool(), item_ids=item_ids)

    @classmethod
    def from_pairs(cls, item_num: int, user_num: int, users: np.ndarray, items: np.ndarray) -> "DatasetInfo":
        """From (user, item) training pairs in any order, for data that did not come through a split."""
        order = np.argsort(users, kind="stable")
        groups, counts = np.unique(np.asarray(users)[order], return_counts=True)
        return cls(item_num, user_num, train_items=np.asarray(items)[order],
                   train_groups=(groups, np.concatenate([[0], np.cumsum(counts)])))

    @functools.cached_property
    def train_users(self) -> np.ndarray | None:
        """int64 [n], the user of each training interaction. Expanded from the per-user groups on first use:
        only graph models need it, and at 200M interactions it is 1.6 GB per process."""
        if self._train_groups is None:
            return None
        users, indptr = self._train_groups
        return np.repeat(users, np.diff(indptr))




@dataclass
class TargetRows:
    """A training batch as a many-negative objective sees it (``REC.model.objectives``).

    ``users`` [N, d]: one user vector per training target; ``targets`` [N]: their item ids; ``item_vectors(ids)``:
    item vectors in the space the users are scored in (rows of ``item_representations()``); ``all_items()``: that
    whole table, indexed by item id (row 0, padding, is never a candidate)."""

    users: torch.Tensor
    targets: torch.Tensor
    item_vectors: Callable[[torch.Tensor], torch.Tensor]
    all_items: Callable[[], torch.Tensor]


def _id_table(num: int, d: int, sparse: bool, **kwargs) -> nn.Embedding:
    table = nn.Embedding(num, d, sparse=sparse, **kwargs)
    table.weight._row_sparse_table = sparse  # the optimizer's cue (REC.trainer.optim)
    return table


class RecModel(nn.Module):
    """Base of every recommender.

    Training: ``forward(batch)`` returns the scalar loss of a training batch (the batch layout is set by
    ``input_type``, see ``REC.data.training``). Evaluation: ``item_representations()`` once per
    evaluation, then per batch of users ``user_representations(batch)`` and ``score(users, items)``.
    """

    # The training examples ``forward`` takes (NEXT_ITEM, PAIR, PREFIX, MASKED, HELD_OUT_ITEM: a module of
    # REC.data.training each), or None for a model evaluated as built (Pop, VisRank), for which the trainer runs
    # no epoch. No default: every registered model states it (``register_model`` checks), and it is the one
    # statement of both what a model trains on and whether it trains, so the two cannot disagree.
    input_type: str | None
    encodes_covers: bool = False  # True: items are encoded from their cover images (PixelNet, REC.model.pixel)
    # True: user_representations reads a learned per-user vector (batch[USER_ID]), so only users of the
    # training data can be scored, never a bare history of items (REC.app.predict refuses those)
    needs_user_id: bool = False
    # True: training reads the whole item table at every step (LightGCN's propagation), so its gradient is dense
    # whatever the loss, and item_table_updates: sparse has nothing to save
    reads_item_table_whole: bool = False
    family: str
    defaults_files: tuple

    def __init__(self, config, info: DatasetInfo):
        super().__init__()
        self.item_num, self.user_num = info.item_num, info.user_num
        # absent (a bare dict, or no config at all): dense
        self._sparse_item_table = config is not None and config.get("item_table_updates") == "sparse"
        self.objective: nn.Module | None = None  # set by create_model for loss != paper (REC.model.objectives)

    def item_table(self, num: int, d: int, **kwargs) -> nn.Module:
        """The item table of an ID model; PixelNet replaces it by cover encodings (``REC.model.pixel``). With
        ``item_table_updates: sparse`` its gradient is row-sparse (``REC.trainer.row_sparse``)."""
        return _id_table(num, d, self._sparse_item_table, **kwargs)

    def user_table(self, num: int, d: int, **kwargs) -> nn.Module:
        """The user table of a model that learns one vector per user (MF, LightGCN). ``item_table_updates:
        sparse`` makes it row-sparse too: a step then moves the rows of its batch's users only, which is what
        makes such a step cost the batch (at Pixel8M's 8.9M users the dense table's AdamW pass is most of the
        step). Read it by lookups only (``.weight`` gives a dense gradient, which DDP refuses for a sparse table).
        A PixelNet model keeps it dense (the option is refused there: its items are covers)."""
        return _id_table(num, d, self._sparse_item_table and not self.encodes_covers, **kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch: the model's own (``paper_loss``, the paper's), or the configured
        objective over the model's ``target_rows``."""
        if self.objective is None:
            return self.paper_loss(batch)
        return self.objective(self.target_rows(batch), batch.get(SHARED_NEGATIVES))

    def paper_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def target_rows(self, batch: dict[str, torch.Tensor]) -> TargetRows:
        """Where this model's user vectors and training targets are; a model that does not say takes only the
        paper's loss."""
        raise NotImplementedError

    @property
    def objective_items(self) -> int:
        """Rows of ``item_representations()`` that are items or padding (BERT4Rec's mask token is neither)."""
        return self.item_num

    def item_representations(self) -> torch.Tensor:
        raise NotImplementedError

    def user_representations(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, item_num] scores of every item for every user (dot product unless a model says otherwise; cosine
        when the objective was trained with ``similarity: cosine``)."""
        if self.objective is not None and self.objective.similarity == "cosine":
            users, items = F.normalize(users, dim=-1), F.normalize(items, dim=-1)
        return users @ items.T


def key_source(config, key: str) -> str:
    """Where ``key`` was set (a file, 'command line', the defaults), as the config layer reports it; a plain dict
    (tests build models from one) says 'config'."""
    source_of = getattr(config, "source_of", None)
    return source_of(key) if source_of is not None else "config"


def key_ref(config, key: str) -> str:
    """``key 'k' = v (source)``: names a second key in a message about the first."""
    return f"key {key!r} = {_plain(config[key])!r} ({key_source(config, key)})"


class ModelConfigError(UserError, ValueError):
    """A hyper-parameter the model cannot use. Models do not import the config layer, so this is their own user
    error, reported by every command like a ConfigError (one line, status 2)."""


def config_error(config, key: str, expected: str) -> ModelConfigError:
    """A hyper-parameter the model cannot use, in the config layer's format: ``<source>: key 'k' = v; expected
    ...``. Single-key ranges are declared in the model's YAML; this is for what spans keys or the model's shape."""
    return ModelConfigError(f"{key_source(config, key)}: key {key!r} = {_plain(config[key])!r}; expected {expected}")


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-log sigmoid(pos - neg)`` in fp32.

    The original writes ``-log(sigmoid(d) + 1e-8)``; ``logsigmoid`` is the same away from saturation and
    does not flatten the gradient at 1e-8 when a pair is badly misordered.
    """
    return -torch.nn.functional.logsigmoid(pos.float() - neg.float())
