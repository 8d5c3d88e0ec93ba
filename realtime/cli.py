"""``python -m realtime`` and ``emotion realtime``: label faces live from a camera, video, folder or stream."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def realtime(
    source: Annotated[str, typer.Option(help="Webcam index, video file, folder of images, or stream URL.")] = "0",
    model: Annotated[
        str | None,
        typer.Option(
            help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder (default: models:/emotion-classifier"
            "@champion, else the shipped models:/emotion-fer2013@champion)."
        ),
    ] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow URI (default: the flows' embedded store).")] = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", "-d", help="Where the embedded store and cache live.")] = (
        Path("emotion-data")
    ),
    display: Annotated[bool, typer.Option(help="Show a window (quit with q or Esc).")] = False,
    output: Annotated[Path | None, typer.Option(help="Write the annotated video here (.mp4).")] = None,
    events: Annotated[Path | None, typer.Option(help="Write one JSON line per face per frame here.")] = None,
    max_frames: Annotated[int | None, typer.Option(min=1, help="Stop after this many frames.")] = None,
    no_characters: Annotated[bool, typer.Option("--no-characters", help="Draw no emotion characters.")] = False,
    landmarks: Annotated[
        bool, typer.Option(help="Fit 68-point landmarks, draw them and put the characters on the faces (extra).")
    ] = False,
    stats: Annotated[bool, typer.Option(help="Show FPS and per-stage latency on screen and in the log.")] = False,
    match_sharpness: Annotated[
        bool,
        typer.Option(help="Blur faces much sharper than the model's training faces to their sharpness."),
    ] = False,
    detect_every: Annotated[
        int, typer.Option(min=1, help="Look for the tracked faces around their boxes every N frames.")
    ] = 3,
    full_detect_every: Annotated[
        int, typer.Option(min=1, help="Search the whole frame for new faces every N frames.")
    ] = 30,
) -> None:
    """Label the faces of a live source with a registered emotion model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    logging.basicConfig(level=logging.INFO if stats else logging.WARNING, format="%(message)s")
    from modelstore import (
        DEFAULT_MODEL_URIS,
        ModelLoadError,
        ModelNotRegistered,
        TrackingUnavailable,
        configure,
        default_tracking_uri,
        load_first,
    )

    from .app import Options, RealtimeApp
    from .capture import CaptureError, open_source

    landmark_detector = None
    if landmarks:
        from emotion_core.landmarks import load_landmarks

        landmark_detector, reason = load_landmarks()
        if landmark_detector is None:
            typer.echo(f"{reason}; continuing without them", err=True)
    try:
        source_handle = open_source(source)
    except CaptureError as exc:
        fail(str(exc), 2)
    offline = False
    try:
        try:
            configure(default_tracking_uri(data_dir, tracking_uri))
        except TrackingUnavailable as exc:
            typer.echo(f"{exc}; trying the local model cache", err=True)
            offline = True
        uris = (model,) if model else DEFAULT_MODEL_URIS
        loaded = load_first(uris, Path(data_dir) / "mlflow" / "model-cache", offline=offline)
    except ModelLoadError as exc:
        source_handle.close()
        hint = (
            f"; register one in {data_dir} first: `emotion model install-pretrained -d {data_dir}` (the shipped "
            f"FER2013 model, seconds), `emotion pipeline PHOTOS -d {data_dir}` (your labelled photos) or "
            f"`emotion demo -d {data_dir}` (generated faces), or pass --model"
            if isinstance(exc, ModelNotRegistered)
            else ""
        )
        fail(f"{exc}{hint}", 2)
    if loaded.from_cache:
        typer.echo(f"tracking server unreachable: using cached {loaded.name} v{loaded.version}", err=True)
    elif not model:
        typer.echo(f"model: models:/{loaded.name}/{loaded.version} ({', '.join(loaded.labels)})", err=True)
    options = Options(
        detect_every=detect_every,
        full_detect_every=full_detect_every,
        characters=not no_characters,
        landmarks=landmark_detector,
        stats=stats,
        max_frames=max_frames,
        train_sharpness=loaded.train_sharpness,
        match_sharpness=match_sharpness,
    )
    app_ = RealtimeApp(loaded.model, loaded.labels, loaded.input_size, options)
    try:
        result = app_.run(source_handle, output=output, events=events, display=display)
    except CaptureError as exc:
        fail(f"{exc}; output written so far is kept", 3)
    except OSError as exc:
        fail(str(exc), 2)
    summary = result.summary()
    typer.echo(
        json.dumps(
            {
                "model": f"{loaded.name}/{loaded.version}",
                **{k: round(v, 2) if isinstance(v, float) else v for k, v in summary.items()},
            }
        )
    )


app.command()(realtime)


def _stop(signum: int, _frame) -> None:
    raise KeyboardInterrupt  # unwinds through RealtimeApp.run, which closes the window, video and events


def main() -> None:
    """``python -m realtime``: Ctrl-C and SIGTERM close the window, the video and the events file cleanly."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    app()
