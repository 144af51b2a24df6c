"""The only module that knows about process groups, ranks and backends.

Everything else asks: ``rank()``, ``world_size()``, ``is_main()``, ``barrier()``, ``all_reduce_sum(t)``,
``all_gather_rows(t, counts)``.
Without an initialised process group (a single process) these are no-ops, so the same code runs both ways.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DeviceSpec:
    """What ``--device`` asked for: ``cpu`` (1 process), ``cpu:N`` (N gloo processes), ``0,1,...`` (GPUs, NCCL)."""

    kind: str               # "cpu" or "cuda"
    nproc: int
    gpu_ids: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "DeviceSpec":
        text = text.strip().lower()
        if text == "cpu":
            return cls("cpu", 1)
        if text.startswith("cpu:"):
            n = text[4:]
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"--device {text!r}: expected cpu:<number of processes>, e.g. cpu:2")
            return cls("cpu", int(n))
        ids = [p.strip() for p in text.split(",")]
        if not all(p.isdigit() for p in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"--device {text!r}: expected cpu, cpu:<n>, or distinct GPU ids such as 0,1,2,3")
        return cls("cuda", len(ids), tuple(int(p) for p in ids))

    @property
    def backend(self) -> str:
        return "nccl" if self.kind == "cuda" else "gloo"


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init(spec: DeviceSpec, timeout_s: int) -> torch.device:
    """Join the process group when launched with several processes; return this process's device.

    The timeout turns a rank that never arrives (a crash on another rank) into an error instead of a hang.
    """
    if spec.kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device asked for GPUs {spec.gpu_ids} but CUDA is not available here; use --device cpu")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_initialized():
        kwargs = {"device_id": device} if spec.kind == "cuda" else {}
        dist.init_process_group(spec.backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return device


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ``counts[r]`` is rank r's row count (they may differ, so
    each rank pads to the largest share before the collective and the padding is cut afterwards)."""
    if not is_initialized():
        return t
    width = max(counts)
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:len(t)] = t
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not is_initialized() or not any(p.requires_grad for p in model.parameters()):
        return model  # nothing to synchronise (e.g. Pop)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
