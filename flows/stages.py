"""The data-stage flows: compress, crop and split. Each reads and writes ``<data-dir>/manifest.parquet``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task

from emotion_core import assemble
from emotion_core.chunks import DEFAULT_CHUNK_SIZE, make_chunks, top_folder
from emotion_core.compress import DEFAULT_QUALITY
from emotion_core.discover import discover
from emotion_core.faces import DetectorConfig
from emotion_core.imageio import DEFAULT_MAX_PIXELS, remove_stale_temps
from emotion_core.lock import data_dir_lock
from emotion_core.manifest import MANIFEST_NAME, ManifestInfo, read_manifest, status_counts, write_manifest
from emotion_core.split import DEFAULT_RATIOS, DEFAULT_SEED, assign_splits
from tasks.compress import compress_chunk
from tasks.crop import crop_chunk

from .environment import DEFAULT_DATA_DIR
from .runner import RunnerSpec, run_chunks


def manifest_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / MANIFEST_NAME


def sweep_stale_temps(data_dir: str | Path, *folders: str) -> None:
    """Remove the temporary files that writers killed mid-write left in the data directory itself
    (the manifest) and in ``folders`` below it. Run under the data-directory lock, so none is live."""
    remove_stale_temps(Path(data_dir), recursive=False)
    for folder in folders:
        remove_stale_temps(Path(data_dir) / folder)


def _chunks(paths: list[str], chunk_size: int, runner: RunnerSpec):
    # Four chunks a worker at least: the last round of a stage then leaves a worker idle for a
    # quarter of a chunk at most, instead of up to a whole chunk (measured: 7 chunks on 2 workers
    # wasted 12% of the stage).
    return make_chunks(paths, top_folder, chunk_size, min_chunks=4 * runner.parallelism)


@flow(name="compress", log_prints=True)
def compress_flow(
    input_root: str,
    data_dir: str = DEFAULT_DATA_DIR,
    quality: int = DEFAULT_QUALITY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    task_runner: str = "threads",
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict:
    """Stage 1: re-encode every image under ``input_root`` as JPEG ``quality`` into ``<data_dir>/compressed``."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}")
    runner = RunnerSpec(task_runner, workers, dask_address)
    with data_dir_lock(data_dir):
        found = discover(input_root)
        sweep_stale_temps(data_dir, "compressed", "state/compress")
        chunks = _chunks([img.rel_path for img in found.images], chunk_size, runner)
        results, counts = run_chunks(
            compress_chunk,
            chunks,
            "compress",
            runner,
            source_root=str(found.root),
            data_dir=str(data_dir),
            quality=quality,
            max_pixels=max_pixels,
        )
        df = assemble.after_compress(found.images, results)
        info = ManifestInfo(found.labels, found.layout, "compress", str(found.root.resolve()))
        write_manifest(df, manifest_path(data_dir), info)
    ok = df[df["status"] == "ok"]
    summary = {
        "stage": "compress",
        "files": len(df),
        "labels": list(found.labels),
        "layout": found.layout,
        "status": status_counts(df),
        "files_skipped": sum(r.get("skipped", False) for r in results),
        "bytes_in": int(ok["bytes_in"].sum()),
        "bytes_out": int(ok["bytes_out"].sum()),
        **counts,
    }
    get_run_logger().info("compress: %s", summary)
    return summary


@flow(name="crop", log_prints=True)
def crop_flow(
    data_dir: str = DEFAULT_DATA_DIR,
    face_mode: str = "auto",
    policy: str = "largest",
    scale_factor: float = DetectorConfig.scale_factor,
    min_neighbors: int = DetectorConfig.min_neighbors,
    working_size: int = DetectorConfig.working_size,
    max_face_side: int = 256,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    task_runner: str = "threads",
    workers: int | None = None,
    dask_address: str | None = None,
) -> dict:
    """Stage 2: find the face in every compressed image and write grayscale crops to ``<data_dir>/faces``."""
    config = DetectorConfig(scale_factor=scale_factor, min_neighbors=min_neighbors, working_size=working_size)
    runner = RunnerSpec(task_runner, workers, dask_address)
    with data_dir_lock(data_dir):
        df, info = read_manifest(manifest_path(data_dir))
        sweep_stale_temps(data_dir, "faces", "state/crop")
        paths = df.loc[df["status"] == "ok", "compressed_path"].drop_duplicates().tolist()
        chunks = _chunks(paths, chunk_size, runner)
        results, counts = run_chunks(
            crop_chunk,
            chunks,
            "crop",
            runner,
            data_dir=str(data_dir),
            face_mode=face_mode,
            policy=policy,
            detector=asdict(config),
            max_face_side=max_face_side,
        )
        df = assemble.after_crop(df, results)
        write_manifest(df, manifest_path(data_dir), ManifestInfo(info.labels, info.layout, "crop", info.source_root))
    summary = {"stage": "crop", "rows": len(df), "face_mode": face_mode, "status": status_counts(df), **counts}
    get_run_logger().info("crop: %s", summary)
    return summary


@task(name="assign-splits")
def _assign(data_dir: str, ratios: list[float], seed: int) -> dict:
    df, info = read_manifest(manifest_path(data_dir))
    if info.stage not in ("crop", "split"):
        raise ValueError(f"the manifest in {data_dir} has not been through the crop stage yet (stage: {info.stage})")
    df = assign_splits(df, ratios, seed)
    write_manifest(df, manifest_path(data_dir), ManifestInfo(info.labels, info.layout, "split", info.source_root))
    ok = df[df["status"] == "ok"]
    per_split = ok.groupby(["split", "label"]).size()
    return {
        "stage": "split",
        "rows": len(df),
        "status": status_counts(df),
        "splits": {s: int(n) for s, n in ok["split"].value_counts().items()},
        "per_split_label": {f"{s}/{lbl}": int(n) for (s, lbl), n in per_split.items()},
    }


@flow(name="split", log_prints=True)
def split_flow(
    data_dir: str = DEFAULT_DATA_DIR,
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
) -> dict:
    """Stage 3: assign a stratified, deterministic train/val/test split to every usable face."""
    with data_dir_lock(data_dir):
        sweep_stale_temps(data_dir)
        summary = _assign(str(data_dir), list(ratios), seed)
    get_run_logger().info("split: %s", summary)
    return summary
