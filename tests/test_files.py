"""The one atomic-write helper that checkpoints, results, caches, reports and predictions all go through."""
import pytest

from REC.utils.files import atomic_output, write_text_atomic


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
