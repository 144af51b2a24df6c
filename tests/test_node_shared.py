"""Arrays every rank needs whole (the training examples) are built by rank 0 and memory-mapped by the others."""
import socket

import numpy as np
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from REC.data.node_shared import content_digest, shared_on_node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, folder: str, damage: bool, out):
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        built = []

        def build():
            built.append(rank)
            return np.arange(1000, dtype=np.int32).reshape(100, 10) * 3
        if damage and rank == 0:  # a file of the right name whose bytes were changed afterwards
            good = build()
            built.clear()
            path = f"{folder}/chunks-{content_digest(good)}.npy"
            bad = good.copy()
            bad[5, 5] = -1
            np.save(path, bad)
        array = shared_on_node("chunks", {"data_path": None, "dataset": None, "cache_dir": folder}, build)
        out.put((rank, bool(built), isinstance(array, np.memmap), int(array.sum()), array.shape))
    finally:
        torch_dist.destroy_process_group()


def run_two(folder, damage=False):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, str(folder), damage, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    return dict((r[0], r[1:]) for r in (out.get(timeout=5) for _ in procs))


def test_rank_zero_builds_and_every_rank_maps_one_file(tmp_path):
    expected = int((np.arange(1000) * 3).sum())
    got = run_two(tmp_path)
    assert got[0] == (True, True, expected, (100, 10))   # built once, then mapped
    assert got[1] == (False, True, expected, (100, 10))  # never built: rank 0's file
    assert len(list(tmp_path.glob("chunks-*.npy"))) == 1


def test_a_file_whose_bytes_differ_from_its_name_is_replaced_not_used(tmp_path):
    got = run_two(tmp_path, damage=True)
    expected = int((np.arange(1000) * 3).sum())
    assert got[0][2] == got[1][2] == expected  # rank 0 replaced the damaged file; nobody trained on it
