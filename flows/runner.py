"""Task-runner selection and the fan-out of chunk tasks with a progress bar."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from emotion_core import stopping
from emotion_core.chunks import Chunk

TASK_RUNNERS = ("threads", "processes", "dask")


class StageFailed(RuntimeError):
    """Some chunks of a stage failed even after retries; the finished ones are recorded."""


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def make_task_runner(kind: str = "threads", workers: int | None = None, dask_address: str | None = None):
    """A Prefect task runner: local threads (default), local processes, or a Dask cluster."""
    workers = workers or default_workers()
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":  # workers end within a second of a kill -9, Ctrl-C or SIGTERM of the command
        return ProcessPoolTaskRunner(
            max_workers=workers, initializer=stopping.exit_with_parent, initargs=(stopping.worker_stop_event(),)
        )
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # The local cluster's own shutdown chatter (tracebacks of closed connections when Ctrl-C
        # stops a run) stays off the terminal; task failures still reach the stage's one-line error.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    raise ValueError(f"unknown task runner {kind!r}; choose one of {TASK_RUNNERS}")


@dataclass(frozen=True)
class RunnerSpec:
    """Where a stage's chunk tasks run: ``threads`` or ``processes`` locally, or ``dask``."""

    kind: str = "threads"
    workers: int | None = None
    dask_address: str | None = None

    def build(self):
        return make_task_runner(self.kind, self.workers, self.dask_address)

    @property
    def parallelism(self) -> int:
        return self.workers or default_workers()


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


def run_chunks(
    task, chunks: Sequence[Chunk], description: str, runner: RunnerSpec, **kwargs
) -> tuple[list[dict], dict[str, int]]:
    """Submit one task run per chunk, show progress per file, and gather the result rows.

    Every chunk is awaited even when some fail, so finished chunks are recorded and a rerun only
    redoes the failed ones; then :class:`StageFailed` is raised. Rows come back in chunk order.
    """
    stopping.raise_if_requested()
    logger = get_run_logger()
    outputs: list[dict | None] = [None] * len(chunks)
    errors: list[str] = []
    with runner.build() as task_runner, progress_bar() as bar:
        # largest chunks first, so the small ones fill the gaps at the end
        order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i].paths))
        futures = {
            task_runner.submit(task, parameters={"chunk": chunks[i].name, "paths": list(chunks[i].paths), **kwargs}): i
            for i in order
        }
        bar_id = bar.add_task(description, total=sum(len(c.paths) for c in chunks))
        for future in as_completed(list(futures)):
            stopping.raise_if_requested()  # leaving the block cancels the chunks not yet started
            index = futures[future]
            try:
                outputs[index] = future.result()
            except Exception as exc:  # a chunk that failed after its retries
                errors.append(f"{chunks[index].name}: {exc}")
                logger.error("chunk %s failed: %s", chunks[index].name, exc)
            bar.advance(bar_id, len(chunks[index].paths))
    if errors:
        raise StageFailed(
            f"{description}: {len(errors)} of {len(chunks)} chunks failed (first: {errors[0]}); "
            "rerun to retry only those"
        )
    done = [o for o in outputs if o is not None]
    counts = {"chunks": len(chunks), "chunks_cached": sum(o["cached"] for o in done)}
    return [row for o in done for row in o["results"]], counts
