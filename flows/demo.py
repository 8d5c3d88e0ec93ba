"""``emotion demo``: the whole system end to end on data the project generates itself."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from emotion_core.synthetic import render_demo_video, write_demo_dataset

from .pipeline import emotion_pipeline

#: The demo registers its model under its own name: a model of generated faces never becomes the
#: champion that ``emotion realtime`` picks for real faces.
DEMO_MODEL_NAME = "emotion-demo"

console = Console()


def run_demo(
    data_dir: Path,
    data: Path | None = None,
    per_class: int = 60,
    preset: str = "demo",
    epochs: int | None = None,
    frames: int = 120,
    workers: int | None = None,
) -> dict:
    """Generate (or take) a dataset, run compress -> crop -> split -> train -> register, then the
    realtime client headless on a generated video. Everything already done is reused on a rerun."""
    started = time.perf_counter()
    data_dir = Path(data_dir)
    if data is None:
        input_root = data_dir / "demo-input"
        console.rule("[bold]1/3 generating demo photos")
        written = write_demo_dataset(input_root, per_class=per_class, workers=workers or 2)
        console.print(
            f"{sum(written.values())} photos written, {7 * per_class - sum(written.values())} reused "
            f"in {input_root} (AIHub layout, Korean folder names)"
        )
    else:
        input_root = Path(data)
        console.rule(f"[bold]1/3 using the dataset at {input_root}")
    console.rule("[bold]2/3 Prefect pipeline: compress -> crop -> split -> train -> register")
    result = emotion_pipeline(
        str(input_root),
        str(data_dir),
        until="train",
        preset=preset,
        epochs=epochs,
        workers=workers,
        registered_name=DEMO_MODEL_NAME,
    )
    console.rule("[bold]3/3 realtime client on a generated video (headless)")
    video = data_dir / "demo-video.mp4"
    if not video.is_file():
        render_demo_video(video, frames=frames)
    realtime = run_realtime(data_dir, video, result["train"]["tracking_uri"])
    result["realtime"] = realtime
    result["elapsed_s"] = time.perf_counter() - started
    (data_dir / "demo-summary.json").write_text(
        json.dumps(
            {k: v for k, v in result.items() if k != "train"}
            | {"train": {k: v for k, v in result["train"].items() if k != "report"}},
            indent=2,
            default=str,
        )
    )
    return result


def run_realtime(data_dir: Path, video: Path, tracking_uri: str) -> dict:
    """Label the demo video with the champion model; writes the annotated video and events file."""
    from modelstore import configure, load_model
    from realtime.app import Options, RealtimeApp
    from realtime.capture import open_source

    configure(tracking_uri)
    loaded = load_model(f"models:/{DEMO_MODEL_NAME}@champion", data_dir / "mlflow" / "model-cache")
    app = RealtimeApp(loaded.model, loaded.labels, loaded.input_size, Options(stats=True))
    output, events = data_dir / "demo-annotated.mp4", data_dir / "demo-events.jsonl"
    stats = app.run(open_source(str(video)), output=output, events=events)
    return {
        "video": str(video),
        "annotated": str(output),
        "events": str(events),
        "model": f"{loaded.name} v{loaded.version}",
        **stats.summary(),
    }
