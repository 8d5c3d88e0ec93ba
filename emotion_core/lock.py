"""An exclusive lock on a data directory, so two runs never interleave their writes."""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class DataDirBusy(RuntimeError):
    """Another process holds the data directory."""


_held: dict[str, tuple[int, int]] = {}  # path -> (fd, depth), re-entrant within one process
_guard = threading.Lock()


@contextmanager
def data_dir_lock(data_dir: str | os.PathLike):
    """Hold ``<data_dir>/.lock`` for the duration; raises :class:`DataDirBusy` if another process has it.

    Re-entrant within a process (the pipeline flow holds it while its stage flows take it again).
    The lock is an ``flock``, so it is released by the kernel if the process dies, even by ``kill -9``.
    """
    path = Path(data_dir).resolve() / LOCK_NAME
    key = str(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise DataDirBusy(
                    f"data directory {path.parent} is in use by {holder}; wait for it to finish"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                os.close(fd)
