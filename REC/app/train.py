"""One run: config -> data -> model -> training -> test -> result.json. ``worker`` is what every process runs."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist
from ..config import Config, ConfigError
from .configure import build_config
from ..data import (DataError, EvalBatches, Interactions, Split, build_train_batches, prepare_run_split,
                   prepare_split, save_run_vocabulary)
from ..data.protocols import save_protocol
from ..data.training import check_negatives_possible
from ..data.cover_batches import BatchesWithCovers, ItemCoverBatches, check_covers, cover_lmdb_path
from ..data.covers import CoverStore
from ..data.shared_negatives import SharedNegativeBatches
from .prefix_store import attach_prefix_store, log_plan
from .loaded_run import load_run, load_run_config
from ..evaluator import FullRankingEvaluator, get_metric
from ..model import create_model
from ..model.base import DatasetInfo
from ..model import get_model_class
from ..model.objectives import check_supported, describe_objective
from ..trainer import Trainer
from ..trainer.checkpoint import new_run_id
from ..trainer.checkpoint import write_json_atomic
from ..trainer.trainer import SHARED_DIR_HINT
from ..trainer.live_log import check_live_log
from ..trainer.transfer import check_init_from, initialise_from
from ..utils.logging import setup_logging
from ..utils.precision import use_tf32
from ..utils.run_layout import BEST_CHECKPOINT, CONFIG_FILE, RunDir
from ..utils.batch_keys import SHARED_NEGATIVES

log = logging.getLogger(__name__)


def preflight(config: Config, resume_dir: str | Path | None = None,
              devices: dist.DeviceSpec | None = None, nnodes: int = 1) -> tuple[Interactions, Split]:
    """Everything that can be checked before processes start: metric names, the data (prepared and cached
    here, once, so workers only read the cache), the model's shapes (built on the meta device, no memory) and
    whether ``init_from`` fits them (not on resume: a resumed run continues from its own weights).
    ``resume_dir`` (a resumed run): the data is read through the run's vocabulary and must be the CSV it started
    with, since continuing on other interactions would mix two datasets in one set of weights. ``devices`` and
    ``nnodes``: the launch's layout, for settings that some layouts cannot run."""
    check_live_log(config)  # a missing tensorboard/wandb stops here, not after the data and model are built
    try:  # a loss the model cannot take, before the data is read
        check_supported(config["loss"], get_model_class(config["model"]))
    except ValueError as exc:
        raise ConfigError(f"{config.source_of('loss')}: {exc}") from None
    for m in config["metrics"]:
        try:
            get_metric(m)
        except ValueError as exc:
            raise ConfigError(f"{config.source_of('metrics')}: key 'metrics': {exc}") from None
    if resume_dir is None:
        inter, split = prepare_split(config)
    else:
        inter, split, check = prepare_run_split(config, resume_dir)
        if check.changed:
            raise DataError(f"cannot resume: {check.describe(resume_dir)}; restore that file or start a new run")
    if len(split.valid) == 0:
        raise ConfigError(f"dataset {config['dataset']!r}: no user has the 3 interactions that a train/valid/test "
                          f"split needs")
    n_items = split.item_num - 1  # row 0 is padding; every evaluation ranks all items
    if max(config["topk"]) > n_items:  # else the first validation fails, after a whole epoch, with no checkpoint
        raise ConfigError(f"{config.source_of('topk')}: key 'topk' = {list(config['topk'])}; expected cut-offs of "
                          f"at most {n_items}, the number of items of dataset {config['dataset']!r}")
    model = create_model(config["model"], config, DatasetInfo.from_split(split, shapes_only=True,
                                                                           item_ids=inter.item_tokens.digest()))
    if model.input_type is not None:
        check_negatives_possible(model.input_type, split, config)  # else a tiny catalogue fails in every process
    if config["item_table_updates"] == "sparse":
        check_sparse_item_table(config, model, devices, nnodes)
    if model.encodes_covers:
        check_covers(config, inter)
        log_plan(config, model, split)
    if config["init_from"] and resume_dir is None:
        check_init_from(model, config)
    log.info("%s", inter.summary(config["dataset"]))
    return inter, split


def check_sparse_item_table(config: Config, model, devices: dist.DeviceSpec | None, nnodes: int) -> None:
    """Row-sparse item-table updates need an ID table built sparse, a loss that reads it by rows (a loss that
    reads it whole gives a dense gradient, which DDP refuses for a sparse table), gradients that clipping can
    read, and a backend that all-reduces sparse tensors (gloo; NCCL cannot)."""
    where = f"{config.source_of('item_table_updates')}: key 'item_table_updates' = 'sparse'"
    # the item table itself: a sparse user table alone (a model whose items are covers or features) is not enough
    items = getattr(model, "item_embedding", None)
    if not (isinstance(items, torch.nn.Embedding) and getattr(items.weight, "_row_sparse_table", False)):
        what = "encodes its items from covers" if model.encodes_covers else "has no ID item table built by rows"
        raise ConfigError(f"{where}, but {config['model']} {what}; expected dense (the default)")
    if model.reads_item_table_whole or config["loss"] == "softmax":
        why = "propagates over the whole graph" if model.reads_item_table_whole else "scores every item (loss: softmax)"
        raise ConfigError(f"{where}, but {config['model']}'s training {why}, which reads the whole item table each "
                          f"step: nothing to save, and DDP refuses the dense gradient; expected dense")
    if config["clip_grad_norm"]:
        raise ConfigError(f"{where} cannot be combined with clip_grad_norm (the norm of a row-sparse gradient is "
                          f"not computed); set clip_grad_norm: null")
    if devices is not None and devices.kind == "cuda" and devices.nproc * nnodes > 1:
        raise ConfigError(f"{where} with {devices.nproc * nnodes} GPU processes: NCCL cannot all-reduce sparse "
                          f"gradients; train on one GPU, on CPU processes (gloo), or with dense")


def new_run_dir(config: Config) -> Path:
    """A fresh ``<output_dir>/<model>-<dataset>-<time>`` (suffixed when runs start in the same second); an
    output_dir that cannot hold it (a path through a regular file, a read-only folder) is a ConfigError."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(config["output_dir"]) / f"{config['model']}-{config['dataset']}-{stamp}"

    def unusable(reason: str) -> ConfigError:
        return ConfigError(f"{config.source_of('output_dir')}: key 'output_dir' = {config['output_dir']!r}: cannot "
                           f"create a run directory there ({reason}); choose a writable folder")

    for n in range(1000):
        run_dir = base if n == 0 else base.with_name(f"{base.name}-{n}")
        try:
            run_dir.mkdir(parents=True)
        except FileExistsError:
            if run_dir.exists():
                continue  # another run started in the same second
            raise unusable("a part of the path is a file") from None  # mkdir(parents=True) met a file on the way
        except OSError as exc:
            raise unusable(exc.strerror or type(exc).__name__) from None  # read-only, permission, no such device
        return run_dir
    raise RuntimeError(f"cannot create a fresh run directory under {base.parent}")


def create_run(config_files, overrides=(), devices: dist.DeviceSpec | None = None,
               nnodes: int = 1) -> tuple[Config, Path]:
    """Check the config and data (for the launch's layout), then make the run directory holding the resolved
    config."""
    config = build_config(config_files, overrides)
    inter, split = preflight(config, devices=devices, nnodes=nnodes)
    run_dir = new_run_dir(config)
    new_run_id(run_dir)
    (run_dir / CONFIG_FILE).write_text(config.dump_yaml())
    save_run_vocabulary(inter, config, run_dir)  # predict, evaluate and resume read the data through these ids
    save_protocol(split, inter.item_tokens, run_dir)  # cold_items.txt and protocol.json, when a protocol is on
    return config, run_dir


def worker(run_dir: str | None, device: str, resume: bool = False, timeout_s: int | None = None) -> dict:
    """Train and test in this process (one of ``world_size``); returns the result summary.

    ``run_dir`` None (the launchers of nodes other than node 0 on a fresh run, which make no directory): take
    rank 0's, whose config gives everything else; ``timeout_s`` is then the collective timeout to join with."""
    return _in_process_group(run_dir, device, lambda *a: _train_and_test(*a, resume=resume), timeout_s=timeout_s)


def eval_worker(run_dir: str, device: str, checkpoint_name: str = BEST_CHECKPOINT) -> dict:
    """Evaluate a saved checkpoint of a run on its valid and test splits; returns both results."""
    return _in_process_group(run_dir, device, lambda *a: _evaluate_checkpoint(*a, checkpoint_name=checkpoint_name),
                             log_to_file=False)


def _in_process_group(run_dir, device, body, log_to_file: bool = True, timeout_s: int | None = None):
    spec = dist.DeviceSpec.parse(device)
    if timeout_s is None:
        timeout_s = load_run_config(run_dir)["dist_timeout_s"]
    this_device = dist.init(spec, timeout_s)
    try:
        run_dir = _agree_on_run_dir(run_dir)
        config = load_run_config(run_dir)
        use_tf32(this_device, config["tf32"])
        if this_device.type == "cpu":  # share the cores between the processes of this machine
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // spec.nproc))
        setup_logging(run_dir if log_to_file else None, dist.rank(), config["state"])
        return body(config, run_dir, this_device)
    finally:
        dist.shutdown()


def _agree_on_run_dir(run_dir: str | Path | None) -> Path:
    """The one run directory of the job: rank 0's. A rank given none takes rank 0's absolute path; every rank
    must then find the same ``config.yaml`` there, else all stop with one message instead of some waiting for
    the others until the collective timeout (a node that does not mount the output_dir, or nodes resuming
    different runs)."""
    root = dist.broadcast_object(None if run_dir is None else os.path.abspath(run_dir))
    mine = Path(run_dir if run_dir is not None else root)
    if dist.world_size() == 1:
        return mine
    path = mine / CONFIG_FILE
    text = path.read_text() if path.is_file() else None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16] if text is not None else None
    dist.check_same(digest, f"the run's {CONFIG_FILE}", f"{SHARED_DIR_HINT}; on --resume, give every node the same "
                    f"RUN_DIR", shown=f"{os.path.abspath(path)}: {f'sha256 {digest}' if digest else 'no such file'}")
    return mine


def _build(config: Config, run_dir: Path, device: torch.device, checkpoint: str | None = None):
    """Interactions and split (through the run's vocabulary), model on ``device`` (with ``checkpoint``'s weights
    when one is named), this rank's evaluation batches and evaluator, and the covers (PixelNet)."""
    loaded = load_run(run_dir, device, checkpoint, config)
    inter, split, model = loaded.inter, loaded.split, loaded.model
    log.info("%s", inter.summary(config["dataset"]))
    m, rank, world = config["MAX_ITEM_LIST_LENGTH"], dist.rank(), dist.world_size()
    b = eval_users_per_batch(config, split.item_num)
    evals = {name: EvalBatches(getattr(split, name), m, b, rank, world) for name in ("valid", "test")}
    store = item_covers = None
    if model.encodes_covers:
        store = CoverStore(cover_lmdb_path(config), inter.item_tokens)
        item_covers = ItemCoverBatches(store, split.item_num, config["cover_batch_size"], rank, world)
    evaluator = FullRankingEvaluator(config["metrics"], config["topk"], config["metric_decimal_place"], device,
                                     config["precision"], item_covers=item_covers,
                                     cover_workers=config["num_workers"],
                                     item_counts=np.bincount(split.train_items, minlength=split.item_num),
                                     popularity_buckets=config["popularity_buckets"])
    return inter, split, model, evals, evaluator, store


def eval_users_per_batch(config: Config, item_num: int) -> int:
    """Users per evaluation batch: ``eval_batch_size``, cut so that a batch's float32 scores of every item fit
    ``eval_memory_mib`` when that is set; logged with what a batch's scores take."""
    users = config["eval_batch_size"]
    row_mib = item_num * 4 / 2 ** 20
    if config["eval_memory_mib"] is not None:
        users = max(1, min(users, int(config["eval_memory_mib"] / row_mib)))
    log.info("evaluation: %d users per batch x %d items = %.0f MiB of scores per batch%s", users, item_num,
             users * row_mib, f" (eval_memory_mib {config['eval_memory_mib']})" if config["eval_memory_mib"] else "")
    return users


def training_batches(model, split: Split, config, store=None, rank: int = 0, world: int = 1):
    """The model's training batches for this rank: its examples (``input_type``), then the shared negatives its
    objective draws, then (PixelNet) the covers of every item a batch names, shared negatives included. None
    for a model that does not train."""
    if model.input_type is None:
        return None
    batches = build_train_batches(model.input_type, split, config, rank, world)
    q = model.objective.draw_distribution if model.objective is not None else None
    if q is not None:
        batches = SharedNegativeBatches(batches, q, config["num_negatives"], config["seed"], SHARED_NEGATIVES)
    if store is not None:
        batches = BatchesWithCovers(batches, store, split.item_num)
        log.info("%s", batches.describe_step(SHARED_NEGATIVES if q is not None else None))
    return batches


def _evaluate_checkpoint(config: Config, run_dir: Path, device: torch.device, checkpoint_name: str) -> dict:
    inter, split, model, evals, evaluator, store = _build(config, run_dir, device, checkpoint_name)
    if store is not None:
        attach_prefix_store(config, model, inter, split, device, store, item_covers=evaluator.item_covers)
    results = {}
    for name, batches in evals.items():
        evaluation = evaluator.evaluate(model, batches)
        results[name] = evaluation.metrics
        if evaluation.buckets:  # per target-popularity bucket, as result.json's test_buckets
            results[f"{name}_buckets"] = evaluation.buckets
    return results


def _train_and_test(config: Config, run_dir: Path, device: torch.device, resume: bool) -> dict:
    log.info("run directory %s, world size %d, device %s, %d threads per process\nconfig (value  # source):\n%s",
             run_dir, dist.world_size(), device, torch.get_num_threads(), (run_dir / CONFIG_FILE).read_text())
    torch.manual_seed(config["seed"])  # model initialisation; every numpy draw takes a Generator seeded from config
    inter, split, model, evals, evaluator, store = _build(config, run_dir, device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s (%s): %d trainable parameters", config["model"], model.family, n_params)
    log.info("%s", describe_objective(config, model, dist.world_size()))
    train_batches = training_batches(model, split, config, store, dist.rank(), dist.world_size())
    valid_batches, test_batches = evals["valid"], evals["test"]
    has_last = resume and RunDir(run_dir).last.is_file()
    dist.check_same(has_last, "whether the run directory holds last.pth", SHARED_DIR_HINT)  # else ranks start apart
    if config["init_from"] and not has_last:  # once, before any epoch
        initialise_from(model, config, run_dir)
    trainer = Trainer(config, model, dist.wrap_ddp(model, device), evaluator, run_dir, device)
    if has_last:
        trainer.resume()
    elif resume:
        log.warning("no checkpoint in %s yet (killed before the first epoch ended); starting from epoch 0", run_dir)
    if store is not None:  # once the frozen weights are final: after init_from and resume
        attach_prefix_store(config, model, inter, split, device, store, train_batches, evaluator.item_covers)
    trainer.fit(train_batches, valid_batches)
    summary = trainer.summary(trainer.test(test_batches))
    summary["trainable_parameters"] = n_params
    if split.protocol:
        summary["protocol"] = split.protocol
    if evaluator.cover_seconds:  # PixelNet: encoding every item's cover, part of each evaluation's time
        summary["cover_encode_seconds"] = sum(evaluator.cover_seconds) / len(evaluator.cover_seconds)
    if dist.is_main():
        write_json_atomic(summary, RunDir(run_dir).result)
        log.info("best valid (epoch %s): %s\ntest: %s\nresults in %s", summary["best_epoch"], summary["best_valid"],
                 summary["test"], RunDir(run_dir).result)
    return summary
