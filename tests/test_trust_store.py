"""Issue 25, the frozen-prefix store under a hostile review: a store that a run reads is never rewritten (another
cover_batch_size reuses it; a rebuild writes a new file and renames it over the old, so a run that mapped the old
one keeps reading it; two builds of one store take turns), a disk that fills up during the build is a one-line
error naming ``encoder_cache_dir`` (not a SIGBUS), and an ``image_size`` that the encoder cannot take is refused
in preflight, with every registered encoder's refusals checked against what its forward really does.

The real CLIP ViT-B/32 with random weights on the 12-item log of tests/test_encoder_cache.py, whose fixtures are
reused (built once more for this module); stores of 4 items where a test builds its own."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
import torch

from REC.config import ConfigError
from REC.data.item_array import human_bytes
from REC.data.prefix_cache import PrefixCache, PrefixCacheError
from REC.app.prefix_store import attach_prefix_store, fill_store
from REC.app.launch import main as launch_main
from REC.model.encoders import build_item_encoder, list_encoders

from . import damage as damage_rows
from .conftest import call_main
from .damage import DAMAGE
from .test_encoder_cache import CPU, PREFIX_SHAPE, CountingCovers, log, tiny, vit, vit_config  # noqa: F401
from .test_encoders import meta

ITEMS = 5  # ids 1..4 in 2 chunks of 2: a store small enough to build in every test


class InvertedCovers(CountingCovers):
    """The real covers, negated: other rows from the same encoder, as another covers database would give."""

    def get(self, ids):
        return 255 - super().get(ids)


def small_store(folder, chunk=2, tag="trust") -> PrefixCache:
    return PrefixCache(folder, "Tiny", {"test": tag}, ITEMS, PREFIX_SHAPE, "float32", chunk=chunk)


# --------------------------------------------------------------------- 1. a store in use is never rewritten
def test_another_cover_batch_size_reuses_the_store_a_run_reads(vit):
    """The first run (cover_batch_size 16) has its store mapped; a second run with cover_batch_size 8 finds it
    complete: nothing encoded, the same file (inode), the first run's rows unchanged. cover_batch_size is not in
    the key and only splits the build, so the rows the second run would compute are the same up to float noise."""
    ids = np.arange(vit.split.item_num)
    before = vit.store.rows(ids).clone()  # maps the file, as the first run's loaders do
    inode = os.stat(vit.store.path).st_ino
    second = vit_config(vit.data, vit.store.path.parent, "--cover_batch_size=8")
    counting = CountingCovers(vit.covers)
    store = attach_prefix_store(second, vit.model, vit.inter, vit.split, CPU, counting)
    assert store.path == vit.store.path and store.key == vit.store.key
    assert counting.calls == []  # reused: no cover read, no row written
    assert os.stat(store.path).st_ino == inode and store.chunk == 16  # the store keeps its own chunks
    assert torch.equal(vit.store.rows(ids), before) and torch.equal(store.rows(ids), before)
    by_8 = torch.cat([vit.items.prefix_of_covers(torch.from_numpy(vit.covers.get(ids[i:i + 8])))
                      for i in range(1, len(ids), 8)])
    torch.testing.assert_close(before[1:], by_8, rtol=1e-5, atol=1e-5)  # what batches of 8 give: float noise


def test_a_rebuild_writes_a_new_file_and_the_mapped_one_keeps_its_rows(vit, tmp_path):
    """A store whose description is lost is built again (from other covers here, so the rows differ): the first
    run's memory map still reads the old rows, a reader that opens the store now reads the new ones."""
    first = small_store(tmp_path)
    fill_store(first, vit.items, vit.covers, CPU, "fp32", False, 0)
    ids = np.arange(ITEMS)
    old = first.rows(ids).clone()  # mapped
    inode = os.stat(first.path).st_ino
    first.meta_path.unlink()

    second = small_store(tmp_path)
    fill_store(second, vit.items, InvertedCovers(vit.covers), CPU, "fp32", False, 0)
    assert torch.equal(first.rows(ids), old)  # the old file, through the map opened before the rebuild
    assert second.complete and os.stat(second.path).st_ino != inode and not second.part_path.exists()
    new = small_store(tmp_path).rows(ids)
    assert not torch.allclose(new[1:], old[1:], atol=1e-3)
    direct = vit.items.prefix_of_covers(torch.from_numpy(255 - vit.covers.get(ids[1:])))
    torch.testing.assert_close(new[1:], direct, rtol=1e-5, atol=1e-5)


def test_a_build_in_progress_is_not_written_by_a_second_run(tmp_path):
    """The second run's create waits until the first has finished, then finds the store complete: it never starts
    a build of its own into the same files."""
    first = small_store(tmp_path)
    assert first.create() == "new"
    found = []
    waiting = threading.Thread(target=lambda: found.append(small_store(tmp_path).create()), daemon=True)
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and found == []  # it waits for the lock
    rows = torch.arange(2 * int(np.prod(PREFIX_SHAPE)), dtype=torch.float32).view(2, *PREFIX_SHAPE)
    first.write(0, rows)
    first.write(1, rows + 1)
    assert not first.path.exists()  # nothing at the store's name before it is complete
    first.finish()
    waiting.join(10)
    assert found == ["complete"]
    assert torch.equal(small_store(tmp_path).rows([3, 4]), rows + 1)


def test_a_resume_keeps_the_chunks_of_the_killed_build(vit, tmp_path):
    """A partial store built with chunks of 2 is resumed by a run with another cover_batch_size (3, and 1 cover per
    forward): only the missing chunk is encoded, into the partial file, and the rows are the encoder's."""
    with pytest.raises(RuntimeError, match="killed"):
        fill_store(small_store(tmp_path), vit.items, CountingCovers(vit.covers, fail_at=2), CPU, "fp32", False, 0)
    again = CountingCovers(vit.covers)
    store = small_store(tmp_path, chunk=3)
    fill_store(store, vit.items, again, CPU, "fp32", False, 0, batch_size=1)
    assert again.calls == [[3, 4]] and store.chunk == 2 and store.complete
    direct = vit.items.prefix_of_covers(torch.from_numpy(vit.covers.get(np.arange(1, ITEMS))))
    torch.testing.assert_close(store.rows(np.arange(1, ITEMS)), direct, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- 2. a full disk
def one_line_no_room(message: str, store: PrefixCache) -> None:
    assert "\n" not in message and "encoder_cache_dir" in message
    assert human_bytes(store.nbytes) in message and f"{store.path.parent} has " in message and " free" in message


def test_no_room_to_reserve_the_rows_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """The rows' blocks are reserved when the store is created, so a disk without them says so there (the free
    space check passed: others took the space since)."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "posix_fallocate", full)
    store = small_store(tmp_path)
    with pytest.raises(PrefixCacheError) as err:
        store.create()
    one_line_no_room(str(err.value), store)
    assert sorted(p.name for p in tmp_path.iterdir()) == [store.path.with_suffix(".lock").name]
    monkeypatch.undo()
    assert small_store(tmp_path).create() == "new"  # the lock was given back


def test_the_disk_filling_up_during_the_build_is_one_line_and_resumable(vit, tmp_path):
    """A write that meets a full disk (a real ENOSPC: the partial file is swapped for /dev/full after chunk 0) is
    the one-line error, not a SIGBUS; chunk 0 stays done, and once there is room the build resumes with chunk 1."""
    store = small_store(tmp_path)
    saved = tmp_path / "saved.part"

    class FillsUp(CountingCovers):
        def get(self, ids):
            if len(self.calls) == 1:  # chunk 0 is written: the disk is full from now on
                os.replace(store.part_path, saved)
                store.part_path.symlink_to("/dev/full")
            return super().get(ids)

    with pytest.raises(PrefixCacheError) as err:
        fill_store(store, vit.items, FillsUp(vit.covers), CPU, "fp32", False, 0)
    one_line_no_room(str(err.value), store)
    assert "ran out of room while being built" in str(err.value)
    assert store.pending() == [1] and not store.complete and not store.path.exists()

    os.replace(saved, store.part_path)  # room again
    again = CountingCovers(vit.covers)
    resumed = small_store(tmp_path)
    fill_store(resumed, vit.items, again, CPU, "fp32", False, 0)  # would wait forever on a lock left held
    assert again.calls == [[3, 4]] and resumed.complete
    direct = vit.items.prefix_of_covers(torch.from_numpy(vit.covers.get(np.arange(1, ITEMS))))
    torch.testing.assert_close(resumed.rows(np.arange(1, ITEMS)), direct, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- 3. image_size
@pytest.mark.parametrize("extra", [["--image_size=256"], ["--image_size=256", "--encoder_cache=off"],
                                   ["--image_size=192", "--encoder=swin_t", "--encoder_readout=null",
                                    "--encoder_trainable_blocks=null"]])
def test_an_image_size_the_encoder_cannot_take_is_one_line_before_the_run(log, tmp_path, capsys, extra):
    status, _, err = call_main(launch_main, [
        "--config_file", "PixelNet/sasrec.yaml", "overall/ViT.yaml", f"--data_path={log.data}", "--dataset=Tiny",
        f"--output_dir={tmp_path / 'runs'}", f"--encoder_cache_dir={tmp_path / 'store'}",
        "--encoder_pretrained=false", "--num_workers=0", "--show_progress=false", *extra], capsys)
    side, encoder = (192, "swin_t") if "--encoder=swin_t" in extra else (256, "clip_vit_b32")
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"key 'image_size' = {side}" in err and f"encoder {encoder}" in err
    assert "takes 224" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


SIDES = (16, 64, 100, 192, 224, 256, 288)


@pytest.mark.parametrize("name", [*list_encoders(), "timm/test_vit", "timm/test_efficientnet"])
def test_every_refused_image_size_fails_in_the_encoder_and_every_accepted_one_runs(name):
    """On the meta device (shapes only): an image_size that ``refuse_size`` refuses makes the encoder's forward
    fail, one it accepts gives [n, out]; the native size is always accepted. The transformers with a fixed grid
    (CLIP ViT-B/32, Swin, BEiT) refuse every side but 224; timm's dynamic test_vit refuses partial patches."""
    enc = meta(name)
    assert enc.backbone.refuse_size(enc.input_size) is None
    refused = set()
    for side in SIDES:
        why = enc.backbone.refuse_size(side)
        with torch.device("meta"):
            try:
                out = enc(torch.zeros(2, 3, side, side))
            except (RuntimeError, AssertionError, ValueError):
                out = None
        assert (out is None) == (why is not None), (side, why)
        if why is not None:
            refused.add(side)
        else:
            assert out.shape == (2, 16)
    fixed = {"clip_vit_b32", "swin_t", "swin_b", "beit_b"}
    assert refused == ({s for s in SIDES if s != 224} if name in fixed else {100} if name == "timm/test_vit"
                       else {16} if name.startswith("clip_rn") else set())


def test_the_refusal_names_the_key_value_encoder_and_sizes(log):
    for extra, want in ((["--image_size=256"], "clip_vit_b32: it takes 224 px covers only (its position "
                                               "embeddings are fixed for a 7 x 7 grid of 32 px patches)"),
                        (["--image_size=16", "--encoder=clip_rn50", "--encoder_readout=null",
                          "--encoder_trainable_blocks=null"], "clip_rn50: it takes covers of at least 31 px")):
        with pytest.raises(ConfigError) as err, torch.device("meta"):
            build_item_encoder(vit_config(log.data, log.store_dir, *extra), 16, shapes_only=True)
        assert str(err.value).startswith(f"command line: key 'image_size' = {extra[0].split('=')[1]}; encoder ")
        assert want in str(err.value) and "or null for its native" in str(err.value)


# --------------------------------------------------------------------- 4. a complete store damaged afterwards
def built_store(vit, folder) -> tuple[PrefixCache, torch.Tensor]:
    """A complete 4-item store of the real encoder's rows, and those rows."""
    store = small_store(folder)
    fill_store(store, vit.items, vit.covers, CPU, "fp32", False, 0)
    return store, small_store(folder).rows(np.arange(ITEMS)).clone()


def flip_bytes(store, row):
    damage_rows.flip_bytes(store.path, row)


WHY = {"two rows swapped": "chunk 0 (items 1..2)", "bytes flipped": "chunk 1 (items 3..4)",
       "header damaged": "header cannot be read", "cut by 64 bytes": "truncated"}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_complete_store_is_rebuilt_with_a_warning(vit, tmp_path, caplog, damage):
    """Each damage of the issue, to a store found complete: a warning naming the file and what is wrong, the store
    built again, and the rows read afterwards are the encoder's, never the damaged ones."""
    store, good = built_store(vit, tmp_path)
    DAMAGE[damage](store.path)
    again = small_store(tmp_path)
    counting = CountingCovers(vit.covers)
    with caplog.at_level("WARNING"):
        fill_store(again, vit.items, counting, CPU, "fp32", False, 0)
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert str(store.path) in said and WHY[damage] in said and "rebuilding" in said, said
    assert counting.calls  # encoded again
    # the object that found the damage reads the rebuilt file, not the map of the damaged one it checked
    assert again.complete and torch.equal(again.rows(np.arange(ITEMS)), good)
    assert torch.equal(small_store(tmp_path).rows(np.arange(ITEMS)), good)


def test_a_resumed_build_checks_the_chunks_the_killed_run_wrote(vit, tmp_path, caplog):
    """A killed build's chunk damaged before the resume: the resumed build encodes only the missing chunk, finds
    the earlier one damaged, and builds the store again."""
    with pytest.raises(RuntimeError, match="killed"):
        fill_store(small_store(tmp_path), vit.items, CountingCovers(vit.covers, fail_at=2), CPU, "fp32", False, 0)
    damage_rows.flip_bytes(small_store(tmp_path).part_path, 1)  # chunk 0, written by the killed run
    store = small_store(tmp_path)
    with caplog.at_level("WARNING"):
        fill_store(store, vit.items, CountingCovers(vit.covers), CPU, "fp32", False, 0)
    assert any("chunk 0 (items 1..2)" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    _, good = built_store(vit, tmp_path / "clean")
    assert store.complete and torch.equal(store.rows(np.arange(ITEMS)), good)


def test_a_reader_that_did_not_check_refuses_a_damaged_chunk_on_first_read(vit, tmp_path):
    """A process that maps the store without the launcher's full check (a loader of an earlier fork) checks each
    chunk the first time it reads it: a damaged chunk is one line naming it, the sound one still reads."""
    store, good = built_store(vit, tmp_path)
    flip_bytes(store, 3)
    reader = small_store(tmp_path)
    assert reader.complete  # the layout is sound: only the rows differ
    assert torch.equal(reader.rows([1, 2]), good[[1, 2]])  # chunk 0 checked and sound
    with pytest.raises(PrefixCacheError) as err:
        reader.rows([4])
    message = str(err.value)
    assert "\n" not in message and str(store.path) in message and "chunk 1 (items 3..4)" in message


def make_read_only(folder) -> None:
    """Make ``folder`` read-only for this process: its permissions, and for root (whom permissions do not stop) a
    read-only bind mount of it onto itself; a test of write refusals needs one of them to hold."""
    for p in [*folder.iterdir(), folder]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    probe = folder / ".probe"
    try:
        probe.write_text("")
    except OSError:
        return
    probe.unlink()
    import subprocess
    for cmd in (["mount", "--bind", str(folder), str(folder)], ["mount", "-o", "remount,ro,bind", str(folder)]):
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            pytest.fail(f"cannot make {folder} read-only here (running as root without mount): {cmd}")


def undo_read_only(folder) -> None:
    import subprocess
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # lazy: a map may still be open
    for p in [folder, *folder.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_complete_store_opens_from_a_read_only_folder_and_a_damaged_one_there_is_one_line(vit, tmp_path):
    folder = tmp_path / "shared"
    store, good = built_store(vit, folder)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    make_read_only(folder)
    try:
        reader = small_store(folder)
        counting = CountingCovers(vit.covers)
        fill_store(reader, vit.items, counting, CPU, "fp32", False, 0)  # no lock taken, nothing written
        assert counting.calls == [] and torch.equal(reader.rows(np.arange(ITEMS)), good)
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    finally:
        undo_read_only(folder)
    flip_bytes(store, 1)
    make_read_only(folder)
    try:
        with pytest.raises(PrefixCacheError) as err:
            fill_store(small_store(folder), vit.items, CountingCovers(vit.covers), CPU, "fp32", False, 0)
    finally:
        undo_read_only(folder)
    message = str(err.value)
    assert "\n" not in message and "chunk 0 (items 1..2)" in message and "cannot be written" in message
    assert "encoder_cache_dir" in message
