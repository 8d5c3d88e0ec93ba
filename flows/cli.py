"""The ``emotion`` command line. Heavy imports (Prefect, TensorFlow, MLflow) happen inside commands,
after the embedded defaults are set, so ``--help`` is instant and errors are one line."""

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from . import environment

app = typer.Typer(
    name="emotion",
    help="Facial-expression pipeline: compress -> crop -> split -> train, orchestrated by Prefect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


class Stage(StrEnum):
    compress = "compress"
    crop = "crop"
    split = "split"


class FaceMode(StrEnum):
    auto = "auto"
    detect = "detect"
    whole = "whole"


class Policy(StrEnum):
    largest = "largest"
    all = "all"
    skip = "skip"


class Runner(StrEnum):
    threads = "threads"
    processes = "processes"
    dask = "dask"


InputRoot = Annotated[Path, typer.Argument(help="Folder of class folders (AIHub <emotion>_TRAIN_<n>/ or <label>/).")]
DataDir = Annotated[Path, typer.Option("--data-dir", "-d", help="Holds every stage's output and the manifest.")]
Quality = Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of the compress stage.")]
FaceModeOpt = Annotated[
    FaceMode,
    typer.Option(
        help="detect: Haar cascade; whole: the image is the face (pre-cropped sets such as FER2013); "
        "auto: whole for images at most 96 px on both sides, detect otherwise."
    ),
]
PolicyOpt = Annotated[Policy, typer.Option(help="Several faces in a photo: keep the largest, all, or skip it.")]
Ratios = Annotated[str, typer.Option(help="train,val,test ratios.")]
Seed = Annotated[int, typer.Option(help="Seed of the deterministic split.")]
ChunkSize = Annotated[int, typer.Option(min=1, help="Files per orchestrator task.")]
RunnerOpt = Annotated[Runner, typer.Option("--task-runner", help="Where chunk tasks run.")]
Workers = Annotated[int | None, typer.Option(min=1, help="Parallel workers (default: CPU cores).")]
DaskAddress = Annotated[str | None, typer.Option(help="Scheduler address of an existing Dask cluster.")]


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    from emotion_core.discover import InputError
    from emotion_core.lock import DataDirBusy
    from emotion_core.manifest import ManifestError

    from .runner import StageFailed

    return (InputError, ManifestError, DataDirBusy, StageFailed, ValueError, OSError)


def _parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(x) for x in text.split(",")]
    except ValueError:
        fail(f"--ratios must be three comma-separated numbers, got {text!r}")
    from emotion_core.split import check_ratios

    try:
        return list(check_ratios(ratios))
    except ValueError as exc:
        fail(str(exc))


def _run_pipeline(input_root: Path, data_dir: Path, until: Stage, **params) -> None:
    if not input_root.is_dir():
        fail(f"input root {input_root} does not exist or is not a folder")
    environment.configure(data_dir)
    from .pipeline import emotion_pipeline

    try:
        result = emotion_pipeline(str(input_root), str(data_dir), until=until.value, **params)
    except _known_errors() as exc:
        fail(str(exc))
    print_results(result, data_dir)


def print_results(result: dict, data_dir: Path) -> None:
    """Print each stage's counts and the per-split, per-label table of the manifest."""
    for stage, summary in result.items():
        status = ", ".join(f"{k}: {v}" for k, v in summary.get("status", {}).items())
        extra = ""
        if stage == "compress" and summary.get("bytes_in"):
            extra = (
                f"; {summary['bytes_in'] / 1e6:.1f} MB -> {summary['bytes_out'] / 1e6:.1f} MB "
                f"({summary['bytes_out'] / summary['bytes_in']:.1%})"
            )
        chunks = f"{summary['chunks_cached']}/{summary['chunks']} chunks reused; " if "chunks" in summary else ""
        console.print(f"[bold]{stage}[/]: {chunks}{status}{extra}", highlight=False)
    from emotion_core.manifest import read_manifest, summary

    from .stages import manifest_path

    df, info = read_manifest(manifest_path(data_dir))
    table = summary(df)
    view = Table(title=f"usable faces per label and split ({info.layout} layout)")
    view.add_column("label")
    for col in table.columns:
        view.add_column(str(col), justify="right")
    for label, row in table.iterrows():
        view.add_row(str(label), *(str(int(v)) for v in row))
    console.print(view)
    console.print(f"manifest: {manifest_path(data_dir)}")


def _pipeline_command(default_until: Stage, show_until: bool):
    """One command body for ``pipeline`` (with ``--until``) and each stage command (until fixed)."""

    def command(
        input_root: InputRoot,
        data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
        until: Annotated[Stage, typer.Option(help="Stop after this stage.", hidden=not show_until)] = default_until,
        quality: Quality = 40,
        face_mode: FaceModeOpt = FaceMode.auto,
        policy: PolicyOpt = Policy.largest,
        ratios: Ratios = "0.8,0.1,0.1",
        seed: Seed = 1337,
        chunk_size: ChunkSize = 200,
        task_runner: RunnerOpt = Runner.threads,
        workers: Workers = None,
        dask_address: DaskAddress = None,
    ) -> None:
        _run_pipeline(
            input_root,
            data_dir,
            until,
            quality=quality,
            face_mode=face_mode.value,
            policy=policy.value,
            ratios=_parse_ratios(ratios),
            seed=seed,
            chunk_size=chunk_size,
            task_runner=task_runner.value,
            workers=workers,
            dask_address=dask_address,
        )

    return command


app.command("pipeline", help="Run the whole pipeline on INPUT_ROOT, stopping after --until; finished work is reused.")(
    _pipeline_command(Stage.split, show_until=True)
)
_STAGE_HELP = {
    Stage.compress: "Re-encode every photo as low-quality JPEG into DATA_DIR/compressed.",
    Stage.crop: "Compress (reusing finished work), then write grayscale face crops to DATA_DIR/faces.",
    Stage.split: "Compress and crop (reusing finished work), then assign the train/val/test split.",
}
for _stage in Stage:
    app.command(_stage.value, help=_STAGE_HELP[_stage])(_pipeline_command(_stage, show_until=False))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
