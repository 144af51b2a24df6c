"""The epoch loop: train, validate every ``eval_step`` epochs, early-stop, checkpoint, resume, test.

Files in the run directory (rank 0 writes them, each atomically):
- ``last.pth``: everything needed to continue (model, optimizer, scaler, epoch, early-stopping state, and the
  world size, which a resume must keep), written after every epoch, so a killed run loses at most the epoch in
  progress;
- ``best.pth``: the weights of the best validation epoch, re-loaded for the test pass;
- ``result.json``: best epoch, best valid metrics, test metrics (overall, and per target-popularity bucket in
  ``best_valid_buckets`` / ``test_buckets`` when ``popularity_buckets`` is on), times and peak memory.

Reproducibility: dropout RNG and the data order are both derived from ``(seed, epoch, rank)`` at the start of
each epoch, so a resumed run continues exactly as the uninterrupted run would have, given the same world size.

Every rank must test the same weights (their metric sums are reduced together), so the test pass checks that all
ranks loaded bit-identical ``best.pth`` weights, and a resume that all loaded the same ``last.pth``: a node that
cannot see the run directory's files (an output_dir not shared between nodes) stops the job with that message.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed as dist
from ..evaluator.ranking import Evaluation, format_buckets
from ..utils.memory import peak_rss_mib
from ..utils.precision import autocast
from ..utils.run_layout import RunDir
from . import checkpoint
from .optim import build_optimizer
from .live_log import open_live_log
from .prefetch import on_device

log = logging.getLogger(__name__)
CHECK_EVERY = 50  # steps between host syncs (NaN check, progress postfix); per-step .item() stalls the device
SHARED_DIR_HINT = ("rank 0 writes the run directory's files and every rank reads them, so a run on several nodes "
                   "needs output_dir on a filesystem shared by all nodes, mounted at the same path")


class NonFiniteLossError(RuntimeError):
    pass


class Trainer:
    def __init__(self, config, model, train_model, evaluator, run_dir: Path, device: torch.device):
        """``model`` is the bare module (evaluation, checkpoints); ``train_model`` may be its DDP wrapper."""
        self.config, self.model, self.train_model = config, model, train_model
        self.evaluator, self.run_dir, self.device = evaluator, Path(run_dir), device
        self.optimizer = build_optimizer(model, config) if model.input_type is not None else None
        self.precision = config["precision"]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.valid_key = config["valid_metric"].lower()
        self.state = {"epoch": -1, "best_score": -math.inf, "best_epoch": None, "best_valid": None,
                      "stale": 0, "stopped": False, "epoch_seconds": [], "eval_seconds": [], "history": []}
        self.live = open_live_log(config, self.run_dir)  # TensorBoard / W&B when on; does nothing otherwise
        self.run_id = checkpoint.read_run_id(self.run_dir)  # every checkpoint carries it (evaluate, predict check)

    # ------------------------------------------------------------------------------------------ state
    @property
    def last_path(self) -> Path:
        return RunDir(self.run_dir).last

    @property
    def best_path(self) -> Path:
        return RunDir(self.run_dir).best

    def save_last(self) -> None:
        if dist.is_main():
            checkpoint.save_atomic({
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "scaler": self.scaler.state_dict(), "trainer": self.state,
                # no RNG state: fit() reseeds torch (CPU and every GPU) from (seed, epoch, rank) before each epoch
                # and the data order comes from (seed, epoch), so the state at an epoch's end is never used again;
                # a per-GPU list would also tie the file to this machine's GPU count
                "world_size": dist.world_size(), "run_id": self.run_id,
                # a many-negative objective's count of candidates per row, for the run's record
                "objective": self.model.objective.progress() if self.model.objective is not None else None,
            }, self.last_path)

    def resume(self) -> None:
        ckpt = checkpoint.load(self.last_path)
        checkpoint.check_belongs(ckpt, self.last_path, self.run_dir)
        saved = ckpt.get("world_size")  # the launcher checks this first; here for callers that bypass it
        if saved is not None and saved != dist.world_size():
            raise checkpoint.CheckpointError(
                f"{self.last_path} was written by {saved} processes and this run has {dist.world_size()}: data "
                f"sharding and per-rank seeds depend on the world size; resume with {saved} processes")
        checkpoint.fit_state(self.model, ckpt["model"], self.last_path)
        if self.optimizer:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except ValueError as exc:  # another grouping of the parameters (e.g. before the objective's group)
                raise checkpoint.CheckpointError(
                    f"{self.last_path}: its optimizer state does not fit this run's parameter groups ({exc}); "
                    f"resume it with the version that wrote it, or start a new run") from None
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.model.objective is not None and ckpt.get("objective"):
            self.model.objective.restore(ckpt["objective"])
        self.state = ckpt["trainer"]
        self.check_same_weights("the checkpoint resumed from", self.last_path, (self.state["epoch"],))
        log.info("resumed from %s after epoch %d (best %s=%s at epoch %s)", self.last_path, self.state["epoch"],
                 self.valid_key, self.state["best_score"], self.state["best_epoch"])

    def check_same_weights(self, what: str, path: Path, extra: tuple = ()) -> None:
        """Stop every rank with one message unless all hold bit-identical weights (read from ``path``)."""
        if dist.world_size() > 1:
            dist.check_same((*extra, checkpoint.state_digest(self.model)), f"{what} ({path.name}: epoch, digest)"
                            if extra else f"{what} ({path.name} digest)", SHARED_DIR_HINT)

    # ------------------------------------------------------------------------------------------ loop
    def fit(self, train_batches, valid_batches) -> None:
        cfg = self.config
        if self.model.input_type is None:  # no training examples: evaluated as built
            self.fit_without_training(valid_batches)
            return
        eval_step = min(cfg["eval_step"], cfg["epochs"])
        first = cfg["epochs"] if self.state["stopped"] else self.state["epoch"] + 1  # a resumed, finished run
        for epoch in range(first, cfg["epochs"]):
            torch.manual_seed(int(np.random.SeedSequence([cfg["seed"], epoch, dist.rank()]).generate_state(1)[0]))
            train_batches.set_epoch(epoch)
            t0 = time.perf_counter()
            loss = self.train_epoch(train_batches, epoch)
            seconds = time.perf_counter() - t0
            self.state["epoch_seconds"].append(seconds)
            log.info("epoch %d training [time: %.2fs, mean batch loss: %.*f]", epoch, seconds,
                     cfg["loss_decimal_place"], loss)
            record = {"epoch": epoch, "train_loss": loss, "train_seconds": seconds}
            stop = False
            if eval_step > 0 and (epoch + 1) % eval_step == 0:
                t0 = time.perf_counter()
                valid = self.evaluator.evaluate(self.model, valid_batches)
                seconds = time.perf_counter() - t0
                self.state["eval_seconds"].append(seconds)
                record.update(valid=valid.metrics, eval_seconds=seconds)
                stop = self.update_early_stopping(epoch, valid)
                log.info("epoch %d evaluating [time: %.2fs, %s: %s]\n  valid: %s", epoch, seconds, self.valid_key,
                         valid.metrics[self.valid_key], "  ".join(f"{k}: {v}" for k, v in valid.metrics.items()))
            elif eval_step == 0:
                self.save_best(epoch, None)
            self.state["history"].append(record)
            self.live.log_epoch(epoch, record)
            self.state.update(epoch=epoch, stopped=stop)
            self.save_last()
            if stop:
                log.info("early stop: no improvement in %d validations; best epoch %d",
                         self.state["stale"], self.state["best_epoch"])
                break

    def fit_without_training(self, valid_batches) -> None:
        """Models such as Pop are complete when built: validate once and keep them as the best model."""
        t0 = time.perf_counter()
        valid = self.evaluator.evaluate(self.model, valid_batches)
        self.state["eval_seconds"].append(time.perf_counter() - t0)
        self.state.update(best_score=valid.metrics[self.valid_key], epoch=0)
        self.state["history"].append({"epoch": 0, "valid": valid.metrics})
        self.save_best(0, valid)
        log.info("%s needs no training; valid: %s", self.config["model"], valid.metrics)

    def train_epoch(self, train_batches, epoch: int) -> float:
        loader = torch.utils.data.DataLoader(
            train_batches, batch_size=None, shuffle=False, num_workers=self.config["num_workers"],
            pin_memory=self.device.type == "cuda")
        self.train_model.train()
        total = torch.zeros((), device=self.device)
        bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (self.config["show_progress"] and dist.is_main()),
                   leave=False, dynamic_ncols=True)
        steps = 0
        for steps, batch in enumerate(on_device(bar, self.device), 1):
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.precision):
                loss = self.train_model(batch)
            self.scaler.scale(loss).backward()
            if self.config["clip_grad_norm"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["clip_grad_norm"])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.detach().float()
            if steps % CHECK_EVERY == 0:
                self.check_finite(total, epoch, steps)
                bar.set_postfix(loss=f"{total.item() / steps:.4f}")
        self.check_finite(total, epoch, steps)
        if dist.world_size() > 1:  # the mean over every process's batches, not rank 0's share alone
            total = dist.all_reduce_sum(total.clone()) / dist.world_size()
        return total.item() / max(steps, 1)

    def check_finite(self, total: torch.Tensor, epoch: int, step: int) -> None:
        """Collective (every rank calls it at the same steps): a rank that stopped alone would leave the others
        waiting in their next all-reduce until dist_timeout_s, so all of them stop, with the same message."""
        bad = dist.ranks_where(not bool(torch.isfinite(total)), self.device)
        if bad:
            where = f" on rank(s) {', '.join(map(str, bad))}" if dist.world_size() > 1 else ""
            kept = (f"{self.last_path} still holds epoch {self.state['epoch']}" if self.state["epoch"] >= 0
                    else "no checkpoint was written (it happened before the first epoch ended)")
            raise NonFiniteLossError(
                f"training loss became NaN or infinite{where} in epoch {epoch} by step {step}; {kept}. Try a lower "
                f"learning rate, clip_grad_norm, or precision: fp32")

    def update_early_stopping(self, epoch: int, valid: Evaluation) -> bool:
        """Ties count as improvements, as in the original; returns True when training should stop."""
        score = valid.metrics[self.valid_key]
        if score >= self.state["best_score"]:
            self.state.update(best_score=score, stale=0)
            self.save_best(epoch, valid)
        else:
            self.state["stale"] += 1
        return self.state["stale"] > self.config["stopping_step"]

    def save_best(self, epoch: int, valid: Evaluation | None) -> None:
        """``valid`` None: no validation ran (eval_step 0), the last epoch is kept as the best."""
        self.state.update(best_epoch=epoch, best_valid=valid.metrics if valid else None,
                          best_valid_buckets=valid.buckets if valid else None)
        if dist.is_main():
            checkpoint.save_atomic({"model": self.model.state_dict(), "epoch": epoch, "run_id": self.run_id},
                                   self.best_path)

    # ------------------------------------------------------------------------------------------ test
    def test(self, test_batches) -> Evaluation:
        dist.barrier()  # rank 0 has finished writing best.pth
        has_best = self.best_path.is_file()
        dist.check_same(has_best, "whether the run directory holds best.pth", SHARED_DIR_HINT)
        if has_best:
            checkpoint.load_weights(self.model, self.best_path, self.run_dir)
        self.check_same_weights("the weights tested", self.best_path)
        t0 = time.perf_counter()
        result = self.evaluator.evaluate(self.model, test_batches)
        log.info("test [time: %.2fs]: %s", time.perf_counter() - t0,
                 "  ".join(f"{k}: {v}" for k, v in result.metrics.items()))
        for name, buckets in (("best valid", self.state.get("best_valid_buckets")), ("test", result.buckets)):
            if buckets:
                log.info("%s by target popularity (training occurrences of the target item):\n%s", name,
                         format_buckets(buckets))
        self.live.log_test(result.metrics, max(self.state["epoch"], 0))
        self.live.close()
        return result

    def summary(self, test: Evaluation) -> dict:
        s = self.state
        peak_rss = torch.tensor([peak_rss_mib()], device=self.device)
        dist.all_reduce_max(peak_rss)
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        return {
            "model": self.config["model"], "dataset": self.config["dataset"],
            "best_epoch": s["best_epoch"], "best_valid": s["best_valid"], "test": test.metrics,
            "best_valid_buckets": s.get("best_valid_buckets"), "test_buckets": test.buckets,
            "epochs_run": s["epoch"] + 1, "seconds_per_epoch": mean(s["epoch_seconds"]),
            "eval_seconds": mean(s["eval_seconds"]), "peak_rss_mib": round(peak_rss.item(), 1),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)
            if self.device.type == "cuda" else None,
            "world_size": dist.world_size(), "precision": self.precision, "history": s["history"],
            **self.objective_record(),
        }

    def objective_record(self) -> dict:
        """What the run trained with, so that two results never differ for a reason the reader cannot see: the
        loss, the candidates each target row was scored against (on average, as trained), the global batch."""
        objective = self.model.objective
        if self.model.input_type is None:
            return {"loss": None, "candidates_per_row": None, "global_batch_size": None}
        per_row = objective.candidates_per_row if objective is not None else 2  # the target and one negative
        return {"loss": self.config["loss"], "candidates_per_row": per_row,
                "global_batch_size": self.config["train_batch_size"] * dist.world_size()}
