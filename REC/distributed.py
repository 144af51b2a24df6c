"""The only module that knows about process groups, ranks and backends.

Everything else asks: ``rank()``, ``world_size()``, ``is_main()``, ``barrier()``, ``all_reduce_sum(t)``,
``all_gather_rows(t, counts)``, ``gather_objects(x)``, ``broadcast_object(x)``, ``ranks_where(flag)``.
Without an initialised process group (a single process) these are no-ops, so the same code runs both ways.
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .utils.errors import UserError


class DeviceError(UserError, ValueError):
    """A ``--device`` value this machine cannot run: the message gives the grammar or what is missing."""


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit also accepts '²', which int() then refuses with a traceback."""
    return text.isascii() and text.isdigit()


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
            if not _is_number(n) or int(n) < 1:
                raise DeviceError(f"--device {text!r}: expected cpu:<number of processes>, e.g. cpu:2")
            return cls("cpu", int(n))
        ids = [p.strip() for p in text.split(",")]
        if not all(map(_is_number, ids)) or len(set(map(int, ids))) != len(ids):
            raise DeviceError(f"--device {text!r}: expected cpu, cpu:<n>, or distinct GPU ids such as 0,1,2,3")
        return cls("cuda", len(ids), tuple(int(p) for p in ids))

    @property
    def backend(self) -> str:
        return "nccl" if self.kind == "cuda" else "gloo"

    def check_cores(self) -> None:
        """``cpu:N`` with more processes than this process may use cores: every process holds its own model,
        optimizer and data, so memory grows with N while the cores (divided between the processes) do not;
        an N beyond them is a typo or a misunderstanding, not a speed-up."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if self.kind == "cpu" and self.nproc > cores:
            raise DeviceError(f"--device cpu:{self.nproc}: this machine gives the job {cores} CPU core(s), and each "
                             f"process needs at least one; ask for at most cpu:{cores}")


class DisagreementError(UserError, RuntimeError):
    """The processes of one job do not see the same input (run directory, checkpoint, weights). Every rank raises
    it together, with the same message, so none is left waiting in a collective."""


def compose_visible_devices(gpu_ids: tuple[int, ...], visible: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that gives this job the GPUs ``--device`` names.

    ``--device`` counts the GPUs this job may use: when a scheduler (SLURM, Kubernetes) has already set
    ``CUDA_VISIBLE_DEVICES`` to the GPUs it granted, ``--device 0,1`` means the first two of those, so the
    result is a sub-list of it (``"3,5,7"`` and (0, 1) give ``"3,5"``); overwriting it with ``"0,1"`` would take
    GPUs granted to another job. Unset, the ids are the machine's own."""
    if visible is None:
        return ",".join(str(i) for i in gpu_ids)
    granted = [v.strip() for v in visible.split(",") if v.strip()]
    beyond = [i for i in gpu_ids if i >= len(granted)]
    if beyond:
        raise DeviceError(f"--device {','.join(map(str, gpu_ids))}: GPU {beyond[0]} does not exist for this job, "
                         f"which may use {len(granted)} GPU(s) (CUDA_VISIBLE_DEVICES={visible!r}); --device counts "
                         f"them from 0")
    return ",".join(granted[i] for i in gpu_ids)


def one_device(text: str) -> torch.device:
    """The device of a command that runs in one process (``REC.app.predict``, ``REC.app.extract``), in the launcher's
    ``--device`` grammar: ``cpu``, or one GPU id such as ``0`` (``cuda`` and ``cuda:N`` are read as GPU 0 and N).
    A GPU that does not exist, or CUDA that is not there, is a DeviceError naming the value."""
    given = text
    text = text.strip().lower()
    text = "0" if text == "cuda" else text[5:] if text.startswith("cuda:") else text
    spec = DeviceSpec.parse(text)
    if spec.nproc != 1:
        raise DeviceError(f"--device {given!r}: this command runs in one process; give cpu or one GPU id such as 0")
    if spec.kind == "cpu":
        return torch.device("cpu")
    gpu = spec.gpu_ids[0]
    check_cuda_shows(repr(given), gpu + 1, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return torch.device("cuda", gpu)


def check_cuda_shows(device_text: str, count: int, visible: str | None) -> None:
    """CUDA is usable and shows at least ``count`` GPUs, else one DeviceError naming the ``--device`` value, the
    torch build and what restricts the GPUs: the one check of the launcher and of the one-process commands."""
    seen = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device_text}: no CUDA GPU is usable here (torch {torch.__version__}, built for "
                          f"CUDA {torch.version.cuda}{seen}); use --device cpu or cpu:N")
    shown = torch.cuda.device_count()
    if shown < count:
        raise DeviceError(f"--device {device_text}: CUDA shows only {shown} GPU(s){seen} and this needs {count}; "
                          f"--device counts GPUs from 0")


def select_gpus(spec: DeviceSpec) -> None:
    """Restrict this process and the ones it launches to the GPUs of ``spec``, and check that CUDA sees them.

    Must run before anything initialises CUDA in this process: CUDA reads ``CUDA_VISIBLE_DEVICES`` once."""
    ids = ",".join(map(str, spec.gpu_ids))
    visible = compose_visible_devices(spec.gpu_ids, os.environ.get("CUDA_VISIBLE_DEVICES"))
    os.environ["CUDA_VISIBLE_DEVICES"] = visible
    check_cuda_shows(ids, spec.nproc, visible)  # the chosen GPUs are now ids 0..nproc-1


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
            raise DeviceError(f"--device asked for GPUs {spec.gpu_ids} but CUDA is not available here; use --device cpu")
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_initialized():
        kwargs = {"device_id": device} if spec.kind == "cuda" else {}
        dist.init_process_group(spec.backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return device


def shutdown() -> None:
    """Release the process group. DDP's wrapper sits in a reference cycle, so its reducer (which holds the group)
    outlives the run's last reference until a collection; destroying the group first makes its teardown abort the
    process at exit now and then (SIGABRT, "terminate called without an active exception": about 1 run in 10 of
    2 gloo processes with torch 2.14). Collecting first frees it in order."""
    if is_initialized():
        gc.collect()
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


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable, small), in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def ranks_where(flag: bool, device: torch.device | None = None) -> list[int]:
    """The ranks whose ``flag`` is true, the same list on every rank (one small all-reduce), so that a condition
    seen by one rank (a NaN loss) stops all of them together instead of leaving the others in a collective."""
    if not is_initialized():
        return [0] if flag else []
    flags = torch.zeros(world_size(), device=device)
    flags[rank()] = float(flag)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [r for r, f in enumerate(flags.tolist()) if f]


def check_same(value, what: str, hint: str, shown=None) -> None:
    """Raise :class:`DisagreementError` on every rank when any rank's ``value`` differs from rank 0's; the message
    names the first such rank and shows its ``shown`` (default: ``value``) beside rank 0's."""
    if not is_initialized():
        return
    seen = gather_objects((socket.gethostname(), value, value if shown is None else shown))
    odd = [r for r, (_, v, _) in enumerate(seen) if v != seen[0][1]]
    if odd:
        (host0, _, shown0), (host, _, shown_r) = seen[0], seen[odd[0]]
        more = f" and {len(odd) - 1} more rank(s)" if len(odd) > 1 else ""
        raise DisagreementError(f"{what} differs between rank 0 on {host0} ({shown0}) and rank {odd[0]} on {host} "
                                f"({shown_r}){more}: {hint}")


def row_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's number of rows ``n``, in rank order (the ``counts`` of ``all_gather_rows``)."""
    if not is_initialized():
        return [n]
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([n], dtype=torch.long, device=device))
    return [int(c.item()) for c in counts]


def _padded(t: torch.Tensor, width: int) -> torch.Tensor:
    padded = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[:len(t)] = t  # differentiable: the copy into the slice passes its gradient back to t
    return padded


def all_gather_rows(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ``counts[r]`` is rank r's row count (they may differ, so
    each rank pads to the largest share before the collective and the padding is cut afterwards)."""
    if not is_initialized():
        return t
    padded = _padded(t, max(counts))
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


class _GatherWithGrad(torch.autograd.Function):
    """Every rank's padded row block, stacked in rank order; backward sums every rank's gradient of the stack and
    hands each rank the part of its own rows."""

    @staticmethod
    def forward(ctx, padded: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(padded) for _ in range(world_size())]
        dist.all_gather(parts, padded.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[rank()]


def all_gather_rows_with_grad(t: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``all_gather_rows``, differentiable: the gradient of each gathered row flows back to the rank that computed
    it, summed over the ranks whose losses used it (in-batch candidates of a many-negative loss)."""
    if not is_initialized():
        return t
    stacked = _GatherWithGrad.apply(_padded(t, max(counts)))
    return torch.cat([part[:n] for part, n in zip(stacked, counts)])


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not is_initialized() or not any(p.requires_grad for p in model.parameters()):
        return model  # nothing to synchronise (e.g. Pop)
    ids = [device.index] if device.type == "cuda" else None
    # gradients live in DDP's communication buckets instead of a second full copy (less memory, no copy per step)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
