"""Chunking of file lists and the per-chunk done-records that make every stage resumable.

A stage processes files in chunks (hundreds of files per orchestrator task). When a chunk
finishes, its results are written atomically as ``<data-dir>/state/<stage>/<key>.json``, where
the key hashes the stage, its parameters and the chunk's input files (path, size, mtime). A rerun
computes the same key and returns the stored results without touching the images, so only
unfinished or changed chunks do work. This is the pipeline's one resume mechanism.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .imageio import atomic_write, flush_to_disk

DEFAULT_CHUNK_SIZE = 200
RECORD_VERSION = 1


@dataclass(frozen=True)
class Chunk:
    """A named slice of files from one class folder."""

    name: str
    paths: tuple[str, ...]


def make_chunks(
    paths: Sequence[str],
    group: Callable[[str], str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_chunks: int = 1,
) -> list[Chunk]:
    """Split ``paths`` into chunks of at most ``chunk_size``, never mixing two groups (class folders).

    When there are few files, chunks shrink (not below 16 files) so that at least ``min_chunks``
    exist and every worker has something to do. The result depends only on the inputs.
    """
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    total = len(paths)
    if total and min_chunks > 1:
        chunk_size = max(1, min(chunk_size, max(16, math.ceil(total / min_chunks))))
    groups: dict[str, list[str]] = {}
    for path in paths:
        groups.setdefault(group(path), []).append(path)
    chunks = []
    for name in sorted(groups):
        members = groups[name]
        n = math.ceil(len(members) / chunk_size)
        size = math.ceil(len(members) / n)  # even chunks: 201 files -> 101 + 100, not 200 + 1
        for i in range(n):
            part = tuple(members[i * size : (i + 1) * size])
            chunks.append(Chunk(f"{name}[{i * size}:{i * size + len(part)}]", part))
    return chunks


def top_folder(path: str) -> str:
    """First component of a relative POSIX path (the class folder)."""
    return path.split("/", 1)[0]


def file_fingerprints(root: Path, paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of each file; a missing file gets size -1."""
    out = []
    for rel in paths:
        try:
            st = os.stat(root / rel)
            out.append((rel, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((rel, -1, 0))
    return out


def chunk_key(stage: str, params: dict, fingerprints: Sequence[tuple[str, int, int]]) -> str:
    """Key of a chunk's work: stage, parameters and input files. Any change gives a new key."""
    payload = json.dumps([RECORD_VERSION, stage, params, list(fingerprints)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ChunkRecords:
    """Done-records of one stage under ``<data-dir>/state/<stage>/``."""

    def __init__(self, data_dir: str | os.PathLike, stage: str):
        self.folder = Path(data_dir) / "state" / stage

    def get(self, key: str) -> list[dict] | None:
        """Stored results for ``key``, or None when the chunk has not finished before."""
        try:
            record = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
            return None
        return record.get("results")

    def put(self, key: str, chunk: str, results: list[dict]) -> None:
        """Store a finished chunk's results atomically, after its output files are on disk."""
        record = {"version": RECORD_VERSION, "chunk": chunk, "results": results}
        flush_to_disk()
        atomic_write(self.folder / f"{key}.json", json.dumps(record, ensure_ascii=False).encode(), durable=True)
