"""The crop stage's chunk task."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from emotion_core.faces import DetectorConfig, crop_file

from .recorded import run_recorded


@task(name="crop-chunk", task_run_name="crop {chunk}", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
def crop_chunk(
    chunk: str,
    paths: list[str],
    data_dir: str,
    face_mode: str,
    policy: str,
    detector: dict,
    max_face_side: int,
) -> dict:
    """Detect faces in a chunk of compressed images and write their grayscale crops."""
    config = DetectorConfig(**detector)
    compressed = Path(data_dir) / "compressed"
    faces = Path(data_dir) / "faces"
    params = {"face_mode": face_mode, "policy": policy, "detector": asdict(config), "max_face_side": max_face_side}

    def one(rel: str) -> list[dict]:
        rows = crop_file(
            compressed, rel, faces, face_mode=face_mode, policy=policy, config=config, max_face_side=max_face_side
        )
        return [row.to_dict() for row in rows]

    return run_recorded("crop", data_dir, params, str(compressed), chunk, paths, one)
