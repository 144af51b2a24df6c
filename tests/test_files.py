"""The one atomic-write helper that checkpoints, results, caches, reports and predictions all go through."""
from pathlib import Path

import pytest

from REC.utils.files import atomic_output, sidecar, write_text_atomic


def test_an_error_mid_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "result.json"
    write_text_atomic(path, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(path, "w") as f:
            f.write("half of the new conte")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    with atomic_output(path, "wb") as f:
        f.write(b"new\n")
    assert path.read_bytes() == b"new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_sidecars_replace_the_npy_suffix():
    """One rule for feature files (REC.app.extract) and saved item tables (REC.app.predict --save_items)."""
    assert sidecar("out/RN50.npy", "items.txt") == Path("out/RN50.items.txt")
    assert sidecar("out/RN50.npy", "json") == Path("out/RN50.json")
    assert sidecar("items.npy", "items.txt") == Path("items.items.txt")  # predict's table: the name it always had
    assert sidecar("items", "items.txt") == Path("items.items.txt")  # no .npy: the kind is added
    assert sidecar("run.v2.npy", "json") == Path("run.v2.json")  # only .npy goes
