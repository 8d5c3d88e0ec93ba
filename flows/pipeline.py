"""The whole-pipeline flow: compress -> crop -> split (-> train), stopping after ``until``."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from emotion_core import stopping
from emotion_core.chunks import DEFAULT_CHUNK_SIZE
from emotion_core.compress import DEFAULT_QUALITY
from emotion_core.lock import data_dir_lock
from emotion_core.split import DEFAULT_RATIOS, DEFAULT_SEED

from .environment import DEFAULT_DATA_DIR
from .stages import compress_flow, crop_flow, split_flow
from .train import train_flow

PIPELINE_STAGES = ("compress", "crop", "split", "train")


@flow(name="emotion-pipeline", log_prints=True)
def emotion_pipeline(
    input_root: str,
    data_dir: str = DEFAULT_DATA_DIR,
    until: str = "train",
    quality: int = DEFAULT_QUALITY,
    face_mode: str = "auto",
    policy: str = "largest",
    ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    seed: int = DEFAULT_SEED,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    task_runner: str = "threads",
    workers: int | None = None,
    dask_address: str | None = None,
    model: str | None = None,
    preset: str = "cpu",
    epochs: int | None = None,
    tracking_uri: str | None = None,
    registered_name: str = "emotion-classifier",
    budget_minutes: float | None = None,
    started_at: float | None = None,
    learning_rate: float | None = None,
    optimizer: str | None = None,
) -> dict:
    """Run the stages in order up to and including ``until``; finished chunks are reused. The
    training preset's time budget (or ``budget_minutes``) counts from ``started_at`` (Unix time,
    default: this flow's start), so the earlier stages count against it."""
    started_at = started_at or time.time()
    if until not in PIPELINE_STAGES:
        raise ValueError(f"unknown stage {until!r}; choose one of {PIPELINE_STAGES}")
    stop = PIPELINE_STAGES.index(until)
    runner = {"task_runner": task_runner, "workers": workers, "dask_address": dask_address}
    out: dict[str, dict] = {}
    with data_dir_lock(data_dir):
        out["compress"] = compress_flow(input_root, data_dir, quality=quality, chunk_size=chunk_size, **runner)
        if stop >= 1:
            stopping.raise_if_requested()
            out["crop"] = crop_flow(data_dir, face_mode=face_mode, policy=policy, chunk_size=chunk_size, **runner)
        if stop >= 2:
            stopping.raise_if_requested()
            out["split"] = split_flow(data_dir, ratios=list(ratios), seed=seed)
        if stop >= 3:
            stopping.raise_if_requested()
            out["train"] = train_flow(
                data_dir,
                model=model,
                preset=preset,
                epochs=epochs,
                tracking_uri=tracking_uri,
                registered_name=registered_name,
                budget_minutes=budget_minutes,
                started_at=started_at,
                learning_rate=learning_rate,
                optimizer=optimizer,
            )
    create_markdown_artifact(
        markdown=summary_markdown(out, data_dir),
        key="pipeline-summary",
        description=f"emotion-pipeline on {input_root}",
    )
    return out


def model_link(train: dict) -> str:
    """Where to look at a registered model: its MLflow UI page, or its URI in a local store."""
    uri = train.get("tracking_uri", "")
    if uri.startswith(("http://", "https://")):
        page = f"{uri.rstrip('/')}/#/models/{train['registered_model']}/versions/{train['version']}"
        return f"[{train['model_uri']}]({page})"
    return f"`{train['model_uri']}` in `{uri}`"


def summary_markdown(out: dict[str, dict], data_dir: str) -> str:
    """The pipeline's summary table (stage, outcome, reuse) with the manifest and model locations."""
    rows = ["| stage | outcome | reused |", "|---|---|---|"]
    for stage, summary in out.items():
        if stage == "train":
            m = summary["metrics"]
            outcome = (
                f"{summary['model']}: {summary['eval_split']} accuracy {m['accuracy']:.3f}, "
                f"macro-F1 {m['macro_f1']:.3f}; @{summary['alias']}"
            )
            reused = "yes" if summary.get("reused") else "no"
        else:
            outcome = ", ".join(f"{k} {v}" for k, v in summary.get("status", {}).items())
            if stage == "compress" and summary.get("bytes_in"):
                outcome += f"; {summary['bytes_in'] / 1e6:.1f} MB -> {summary['bytes_out'] / 1e6:.1f} MB"
            if stage == "split":
                outcome += "; " + ", ".join(f"{k} {v}" for k, v in summary.get("splits", {}).items())
            reused = f"{summary['chunks_cached']}/{summary['chunks']} chunks" if "chunks" in summary else "-"
        rows.append(f"| {stage} | {outcome} | {reused} |")
    rows += ["", f"Manifest: `{Path(data_dir).resolve() / 'manifest.parquet'}`"]
    if "train" in out:
        rows.append(f"Model: {model_link(out['train'])}; MLflow run `{out['train']['run_id']}`")
    return "\n".join(rows)
