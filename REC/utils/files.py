"""Files that are either wholly written or not there: a crash mid-write leaves the previous file intact."""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path


# a temporary file's name says which machine and process write it (a folder may be shared by several nodes)
_HOST = socket.gethostname().replace("/", "_")


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Write ``path`` through a temporary file in the same folder, flushed to disk and renamed over ``path`` only
    when the block ends without an error; on an error the temporary file is removed and ``path`` is left as it
    was. The temporary name carries the process id, so processes writing the same file do not collide."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files that ``atomic_output`` left for ``path`` in processes that no longer run (a
    SIGKILL or power loss skips its clean-up), so a rerun after a kill starts clean instead of leaking a
    half-written copy per attempt. Only this machine's are judged (the name carries the host: a folder shared by
    several nodes holds other machines' files too). Returns the files removed."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{path.name}.{_HOST}.*.tmp"):  # this machine's: another's pids mean nothing here
        pid = tmp.name[len(f".{path.name}.{_HOST}."):-len(".tmp")]
        if pid.isascii() and pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def sidecar(path: str | Path, kind: str) -> Path:
    """The file of ``kind`` that goes with the array ``path``: ``.npy`` replaced by ``.<kind>`` (``x.npy`` ->
    ``x.items.txt``, ``x.json``), or ``.<kind>`` added to a path without it. One rule for every array the code
    writes, so a reader finds what a file's rows are without knowing which tool wrote it."""
    path = Path(path)
    stem = path.name[:-len(".npy")] if path.suffix == ".npy" else path.name
    return path.with_name(f"{stem}.{kind}")
