"""Training objectives beside each model's own (the paper's) loss, chosen by the config key ``loss``.

The paper trains every model with one sampled negative per target (BPR). Later work shows that many negatives per
target matter more than the item encoder (HLLM, arXiv 2409.12740, Table 7), so two objectives score the same
user vectors against many items:

- ``softmax``: cross-entropy of each target over every item of the catalogue (exact; the table is scored at every
  step, so its cost grows with the catalogue).
- ``sampled_softmax``: each target against the step's other targets (in-batch, gathered from every process with
  their gradients) and ``num_negatives`` items drawn once per step and shared by every row of every process. The
  draw happens in the data pipeline (``REC.data.shared_negatives``, from ``draw_distribution``), so that
  PixelNet batches carry the covers of those items beside the batch's own: a batch holds them under
  ``SHARED_NEGATIVES``.
  Every sampled candidate's logit is corrected by the log of how often it is expected among the candidates
  (``log(N p_target(i) + K q(i))``: N target rows whose items follow the training popularity, K shared draws from
  q), so that the sampled sum estimates the full softmax's instead of over-punishing popular items; the row's own
  target, present once, is not corrected. A candidate equal to the row's own target is masked (it is not a
  negative).

A model offers them by implementing ``target_rows(batch) -> TargetRows``: where its user vectors and targets are
(every target position of a sequence, BERT4Rec's masked positions, each (user, item) example). ``paper`` calls the
model's own ``paper_loss`` and changes nothing. Under a cold-start protocol the held-out items are never a
candidate (``allowed``), as they are never the paper's sampled negative. Under DDP the loss of each process is scaled so that the
gradient DDP averages equals that of one process holding the whole global batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as dist
from .base import RecModel, TargetRows
from ..utils.batch_keys import SHARED_NEGATIVES

PAPER = "paper"
OBJECTIVES: dict[str, type] = {}  # loss name -> Objective class, filled by @register_objective


def register_objective(name: str):
    def add(cls):
        cls.name = name
        OBJECTIVES[name] = cls
        return cls
    return add


MAX_TEMPERATURE, MIN_TEMPERATURE = 1.0, 0.01


class Objective(nn.Module):
    """A loss over a model's ``TargetRows``. A module so that a learned temperature is a parameter of the model
    (the rec optimizer group, the checkpoint). Logits are computed in fp32 whatever the autocast precision: a
    softmax over thousands of candidates needs it, and fp16 dot products of wide vectors overflow."""

    name: str

    def __init__(self, config, item_counts: np.ndarray, n_items: int, allowed: np.ndarray | None = None):
        """``allowed``: sorted ids of the items that may be a candidate (``Split.negative_pool()``); None: all."""
        super().__init__()
        self.similarity = config["similarity"]
        start = float(config["temperature"])
        self.learned = bool(config["learn_temperature"])
        log_t = torch.tensor(np.log(start), dtype=torch.float32)
        if self.learned:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)
        self.n_items = n_items  # ids 1 .. n_items - 1 are items
        mask = np.zeros(n_items, dtype=bool)
        mask[1:] = True
        if allowed is not None:
            mask[:] = False
            mask[np.asarray(allowed, dtype=np.int64)] = True
            mask[0] = False
        self.allowed = torch.from_numpy(mask)  # plain tensor, not a buffer (DDP would broadcast it every step)
        self.candidates_seen = self.rows_seen = 0.0  # for the run's record: candidates per row, as trained

    @property
    def temperature(self) -> torch.Tensor:
        if not self.learned:
            return self.log_temperature.exp()
        return self.log_temperature.clamp(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)).exp()

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return F.normalize(x, dim=-1) if self.similarity == "cosine" else x

    @staticmethod
    def global_mean(per_row: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """The mean over every process's rows (``counts``, from ``dist.row_counts``), as this process's share: DDP
        averages the processes' gradients, so each returns sum(local) * world / rows(global), and the average is
        the one-process mean."""
        return per_row.sum() * dist.world_size() / max(sum(counts), 1)

    def record(self, rows: int, candidates_per_row: torch.Tensor | float) -> None:
        """Accumulated without a host sync per step (``candidates_per_row`` may be a device tensor)."""
        if rows:
            self.rows_seen += rows
            self.candidates_seen = self.candidates_seen + rows * candidates_per_row

    @property
    def candidates_per_row(self) -> float | None:
        return float(self.candidates_seen) / self.rows_seen if self.rows_seen else None

    def progress(self) -> dict:
        """What a checkpoint keeps of the objective, so that a resumed run records the same candidates per row
        (the shared negatives depend only on (seed, epoch, batch), so they need no state)."""
        return {"rows_seen": self.rows_seen, "candidates_seen": float(self.candidates_seen)}

    def restore(self, progress: dict) -> None:
        self.rows_seen, self.candidates_seen = float(progress["rows_seen"]), float(progress["candidates_seen"])

    def forward(self, rows: TargetRows, shared_negatives: torch.Tensor | None = None) -> torch.Tensor:
        """``shared_negatives``: the batch's ``SHARED_NEGATIVES`` (objectives that draw them only)."""
        with torch.autocast(rows.users.device.type, enabled=False):
            return self.loss(rows, shared_negatives)

    def loss(self, rows: TargetRows, shared_negatives: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @property
    def draw_distribution(self) -> np.ndarray | None:
        """float64 [n_items]: the probability of each id as a shared negative, for the data pipeline to draw
        ``num_negatives`` per step; None for an objective that draws none."""
        return None


@register_objective("softmax")
class FullSoftmax(Objective):
    """Cross-entropy of each target over every item (ID models)."""

    _mask: torch.Tensor | None = None

    def loss(self, rows: TargetRows, shared_negatives: torch.Tensor | None) -> torch.Tensor:
        items = self.vectors(rows.all_items())[:self.n_items]
        logits = self.vectors(rows.users) @ items.T / self.temperature
        if self._mask is None or self._mask.device != logits.device:
            self._mask = ~self.allowed.to(logits.device)
        logits = logits.masked_fill(self._mask, -torch.inf)  # padding, and held-out items, are not candidates
        self.record(len(rows.targets), int(self.allowed.sum()))
        counts = dist.row_counts(len(rows.targets), logits.device)
        return self.global_mean(F.cross_entropy(logits, rows.targets, reduction="none"), counts)


@register_objective("sampled_softmax")
class SampledSoftmax(Objective):
    """In-batch targets of every process plus ``num_negatives`` shared draws, log-probability corrected."""

    def __init__(self, config, item_counts: np.ndarray, n_items: int, allowed: np.ndarray | None = None):
        super().__init__(config, item_counts, n_items, allowed)
        self.num_negatives = int(config["num_negatives"])
        counts = np.zeros(n_items, dtype=np.float64)
        given = np.asarray(item_counts, dtype=np.float64)[:n_items]
        counts[:len(given)] = given
        counts *= self.allowed.numpy()
        q = counts.copy() if config["negative_sampling"] == "popularity" else self.allowed.numpy().astype(np.float64)
        if q.sum() == 0:  # popularity over items none of which was trained on (tests' hand-made counts)
            q = self.allowed.numpy().astype(np.float64)
        self.q = q / q.sum()
        # plain tensors, not buffers: DDP would broadcast every buffer from rank 0 before each forward; moved to
        # the batch's device on first use
        self.target_p = torch.as_tensor(counts / max(counts.sum(), 1.0)).float()  # targets follow training popularity
        self.draw_q = torch.as_tensor(self.q).float()
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def draw_distribution(self) -> np.ndarray | None:
        return self.q if self.num_negatives else None

    def distributions(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._on:
            self._on[device] = (self.target_p.to(device), self.draw_q.to(device))
        return self._on[device]

    def loss(self, rows: TargetRows, shared_negatives: torch.Tensor | None) -> torch.Tensor:
        users, targets = self.vectors(rows.users), rows.targets
        if shared_negatives is None:
            if self.num_negatives:
                raise KeyError(f"sampled_softmax with num_negatives {self.num_negatives}: the training batch has no "
                               f"{SHARED_NEGATIVES!r}; build them with REC.app.train.training_batches, which "
                               f"draws them from this objective's draw_distribution")
            shared_negatives = targets.new_zeros(0)
        negative_ids = shared_negatives.to(users.device)
        # targets and shared negatives in one item batch: one embedding lookup (one table-sized gradient fill),
        # one set of batch statistics for models with item towers
        vectors = self.vectors(rows.item_vectors(torch.cat([targets, negative_ids])))
        own, negatives = vectors[:len(targets)], vectors[len(targets):]
        counts = dist.row_counts(len(targets), users.device)  # one collective serves both gathers and the mean
        in_batch_ids = dist.all_gather_rows(targets, counts)
        in_batch = dist.all_gather_rows_with_grad(own, counts)  # [N, d] over every process
        candidate_ids = torch.cat([in_batch_ids, negative_ids])
        candidates = torch.cat([in_batch, negatives])
        # log of the expected number of times each candidate is among a step's candidates: the sum over sampled
        # candidates then estimates the sum over every item. The positive is the row's own column, present once,
        # so it is not corrected (correcting it too would weigh it by 1/Q and under-train rare targets)
        target_p, draw_q = self.distributions(users.device)
        log_q = torch.log((len(in_batch_ids) * target_p + self.num_negatives * draw_q).clamp(min=1e-12))
        t = self.temperature
        pos = (users * own).sum(-1, keepdim=True) / t                            # [n, 1]
        other = users @ candidates.T / t - log_q[candidate_ids][None, :]          # [n, C]
        same = candidate_ids[None, :] == targets[:, None]
        logits = torch.cat([pos, other.masked_fill(same, -torch.inf)], 1)
        if len(targets):
            self.record(len(targets), 1 + len(candidate_ids) - same.sum(1).float().mean().detach())
        return self.global_mean(torch.logsumexp(logits, 1) - logits[:, 0], counts)


def build_objective(config, model, item_counts: np.ndarray | None, source: str = "config",
                    allowed: np.ndarray | None = None) -> Objective | None:
    """The objective ``config['loss']`` names for ``model`` (None for ``paper``: the model's own loss);
    ``allowed``: the items that may be candidates (``Split.negative_pool()``, None for all)."""
    name = config["loss"]
    if name == PAPER:
        return None
    try:
        check_supported(name, model)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    counts = item_counts if item_counts is not None else np.ones(model.objective_items, dtype=np.int64)
    return OBJECTIVES[name](config, counts, model.objective_items, allowed)


def describe_objective(config, model, world: int) -> str:
    """The launch line saying what a step scores: which loss, how many candidates per target row."""
    batch = config["train_batch_size"] * world
    if model.input_type is None:
        return "loss: none (the model is not trained)"
    name = config["loss"]
    if name == PAPER:
        return f"loss: paper (the model's own: each target against 1 sampled negative); global batch {batch}"
    t = f"temperature {config['temperature']}{' (learned)' if config['learn_temperature'] else ''}"
    if name == "softmax":
        return (f"loss: softmax over all {model.objective_items - 1} items, {config['similarity']} similarity, {t}; "
                f"global batch {batch}")
    return (f"loss: sampled_softmax: each target row against the other target rows of the global batch of {batch} "
            f"(every target position of a sequence is a row) plus {config['num_negatives']} shared "
            f"{config['negative_sampling']} negatives per step, log-probability corrected; "
            f"{config['similarity']} similarity, {t}")


def check_supported(name: str, model) -> None:
    """Refuse a loss a model (or model class) cannot take, naming both; preflight asks before reading any data."""
    if name == PAPER:
        return
    model = model if isinstance(model, type) else type(model)
    cls = model.__name__
    if model.input_type is None:
        raise ValueError(f"key 'loss' = {name!r}: model {cls} is not trained (it is complete when built); use "
                         f"loss: paper")
    if model.target_rows is RecModel.target_rows:
        raise ValueError(f"key 'loss' = {name!r}: model {cls} does not expose its user vectors and targets to a "
                         f"many-negative objective yet; use loss: paper")
    if model.encodes_covers and name == "softmax":
        raise ValueError(f"key 'loss' = 'softmax': model {cls} encodes its items from covers, and softmax would "
                         f"encode every cover at every step; use loss: sampled_softmax (the step's items plus "
                         f"num_negatives shared covers)")
