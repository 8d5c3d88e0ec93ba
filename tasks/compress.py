"""The compress stage's chunk task."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from emotion_core.compress import compress_file

from .recorded import run_recorded


@task(name="compress-chunk", task_run_name="compress {chunk}", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def compress_chunk(
    chunk: str, paths: list[str], source_root: str, data_dir: str, quality: int, max_pixels: int
) -> dict:
    """Re-encode a chunk of source images as JPEG ``quality`` under ``<data_dir>/compressed``."""
    out_root = Path(data_dir) / "compressed"
    params = {"source_root": str(Path(source_root).resolve()), "quality": quality, "max_pixels": max_pixels}

    def one(rel: str) -> list[dict]:
        result = compress_file(Path(source_root), rel, out_root, quality=quality, max_pixels=max_pixels)
        return [result.to_dict()]

    return run_recorded("compress", data_dir, params, source_root, chunk, paths, one)
