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


def _split_rank(rank: int, port: int, folder: str, out):
    """Rank ``rank`` of 2: the split through shared_split (with a held-out item list and protocol settings, so that
    arrays of its own, references to the interactions and plain values all travel), against one built here."""
    import dataclasses
    from REC.data import leave_one_out, load_interactions
    from REC.data.node_shared import shared_split
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        inter = load_interactions(folder, "Log", folder)
        built = []

        def build():
            built.append(rank)
            split = leave_one_out(inter)
            return dataclasses.replace(split, cold_items=np.array([2, 5]), protocol={"cold_items": {"ratio": 0.1}})
        split = shared_split({"data_path": folder, "dataset": "Log", "cache_dir": folder}, build, inter)
        own = build()
        same = all(np.array_equal(getattr(part, f.name), getattr(mine, f.name))
                   if isinstance(getattr(mine, f.name), np.ndarray) else getattr(part, f.name) == getattr(mine, f.name)
                   for part, mine in ((split, own), (split.valid, own.valid), (split.test, own.test))
                   for f in dataclasses.fields(mine) if f.name not in ("valid", "test"))
        out.put((rank, built == [rank, rank], same, split.valid.hist_items is inter.items,
                 split.train_users is inter.users, not split.train_indptr.flags.writeable))
    finally:
        torch_dist.destroy_process_group()


def test_the_split_is_built_by_rank_zero_and_mapped_by_the_others(tmp_path):
    """A 2-process run builds its leave-one-out split once: rank 1 maps rank 0's file (read-only views), every
    array equals the split built directly, and the histories stay slices of the interactions' own items."""
    rng = np.random.default_rng(0)
    rows = [(int(rng.integers(1, 30)), u, int(t // 2)) for u in range(40) for t in range(int(rng.integers(1, 9)))]
    (tmp_path / "Log.csv").write_text("item_id,user_id,timestamp\n" +
                                      "".join(f"i{i},u{u},{t}\n" for i, u, t in rows))  # ties: two events a second
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_split_rank, args=(r, port, str(tmp_path), out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = dict((r[0], r[1:]) for r in (out.get(timeout=5) for _ in procs))
    # built: rank 0 twice (the shared one and the test's own), rank 1 only the test's own
    assert got[0] == (True, True, True, True, True)
    assert got[1] == (False, True, True, True, True)
    assert len(list(tmp_path.glob("split-*.npy"))) == 1
