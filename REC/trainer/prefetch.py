"""Batches on the device, the next one copied while the current one computes."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch


def on_device(batches: Iterable[dict[str, torch.Tensor]], device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Each batch's tensors moved to ``device``. On CUDA the copy of batch i+1 (from the loader's pinned memory)
    runs on a side stream while batch i computes on the default one; a copy issued on the default stream would
    instead wait for the step before it and the step would wait for it (PixelNet batches carry megabytes of
    covers)."""
    if device.type != "cuda":
        for batch in batches:
            yield {k: v.to(device) for k, v in batch.items()}
        return
    side = torch.cuda.Stream(device)

    def start_copy(batch):
        with torch.cuda.stream(side):
            return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    source = iter(batches)
    pending = next((start_copy(b) for b in source), None)
    while pending is not None:
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(side)
        batch = pending
        for v in batch.values():
            v.record_stream(compute)  # the allocator must not reuse this memory before the step is done with it
        pending = next((start_copy(b) for b in source), None)
        yield batch
