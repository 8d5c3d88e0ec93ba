"""The shared body of every chunk task: skip a chunk that finished before, else do it and record it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from emotion_core import stopping
from emotion_core.chunks import ChunkRecords, chunk_key, file_fingerprints
from emotion_core.imageio import tune_allocator

# Failures that may not recur (disk full, I/O error): their chunk is not recorded as done.
TRANSIENT = frozenset({"write_failed", "unreadable"})


def run_recorded(
    stage: str,
    data_dir: str,
    params: dict,
    input_root: str,
    chunk: str,
    paths: Sequence[str],
    work: Callable[[str], list[dict]],
) -> dict:
    """Return ``{"chunk", "cached", "results"}`` for a chunk, from its done-record when one exists.

    ``work`` is called once per path and returns that path's result rows. The record is written
    only after every path of the chunk is done, so a killed or stopped chunk simply runs again.
    """
    records = ChunkRecords(data_dir, stage)
    key = chunk_key(stage, params, file_fingerprints(Path(input_root), paths))
    stored = records.get(key)
    if stored is not None:
        return {"chunk": chunk, "cached": True, "results": stored}
    tune_allocator()  # once per worker process; decoding full-size photos is the hot path
    results = []
    for path in paths:
        stopping.check()  # Ctrl-C / SIGTERM: abandon the chunk between files; it has no record yet
        results.extend(work(path))
    if not any(row.get("status") in TRANSIENT for row in results):
        records.put(key, chunk, results)  # a chunk with a transient failure is done again next run
    return {"chunk": chunk, "cached": False, "results": results}
