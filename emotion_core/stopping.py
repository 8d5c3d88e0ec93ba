"""A process-wide stop request: set by the command's signal handler, checked between files.

Chunk tasks running in threads of the process that received Ctrl-C or SIGTERM see the request
after the file they are on and abandon their chunk (it has no done-record, so a rerun does it);
training checks it after every step. Pure standard library.
"""

from __future__ import annotations

import threading

_requested = threading.Event()
_signal: list[int] = []
_worker_event = None  # the multiprocessing Event worker processes watch (worker_stop_event)


class StopRequested(Exception):
    """The command was asked to stop (Ctrl-C or SIGTERM); the current unit of work is abandoned."""


class Stopped(BaseException):
    """Raised in the main thread by the command's signal handler: unwinds like KeyboardInterrupt
    (Prefect marks the flow run crashed, context managers stop servers and workers) up to the
    entry point, which prints what was kept and exits ``128 + signal``."""


def request(signum: int = 0) -> None:
    """Ask every chunk task and training step of this process, and the worker processes it
    started with :func:`worker_stop_event`, to stop."""
    _signal.append(signum)
    _requested.set()
    if _worker_event is not None:
        _worker_event.set()


def worker_stop_event():
    """A ``spawn`` multiprocessing Event that :func:`request` sets: pass it to the worker
    processes' :func:`exit_with_parent`, so they stop with this process instead of finishing the
    chunks they hold (a process pool waits for its workers when it shuts down)."""
    global _worker_event
    if _worker_event is None:
        import multiprocessing

        _worker_event = multiprocessing.get_context("spawn").Event()
        if _requested.is_set():
            _worker_event.set()
    return _worker_event


def requested() -> bool:
    return _requested.is_set()


def signal_number() -> int | None:
    """The first signal that asked to stop, if any."""
    return _signal[0] if _signal else None


def check() -> None:
    """Raise :class:`StopRequested` when a stop was requested."""
    if _requested.is_set():
        raise StopRequested("stop requested")


def raise_if_requested() -> None:
    """In the main thread, at a stage or chunk boundary: raise :class:`Stopped` when a stop was
    requested (a signal that arrived while a library swallowed the handler's exception)."""
    if _requested.is_set():
        raise Stopped(f"stop requested by signal {signal_number()}")


def reset() -> None:
    """Forget a stop request (tests, and long-lived processes that run several commands)."""
    _signal.clear()
    _requested.clear()
    if _worker_event is not None:
        _worker_event.clear()


def exit_with_parent(stop=None, interval: float = 0.25) -> None:
    """In a worker process (a process pool's ``initializer``): exit as soon as the process that
    started it is gone (``kill -9`` of the command), instead of living on re-parented to init, or
    as soon as it asks its workers to stop (``stop``, a :func:`worker_stop_event`: Ctrl-C or
    SIGTERM of the command). A watchdog thread checks both; unfinished chunks have no record and
    are redone by the next run, and their outputs are written atomically, so exiting mid-chunk
    loses nothing."""
    import os
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            if stop is None:
                time.sleep(interval)
            elif stop.wait(interval):
                break
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
