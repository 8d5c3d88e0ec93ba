"""The ``emotion`` command line. Heavy imports (Prefect, TensorFlow, MLflow) happen inside commands,
after the embedded defaults are set, so ``--help`` is instant and errors are one line."""

import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from emotion_core.models import BUILT_IN_MODELS
from emotion_core.stopping import Stopped
from emotion_core.train import PRESET_BUDGETS

from . import environment

PRESET_HELP = "; ".join(f"{name} ({budget})" for name, budget in PRESET_BUDGETS.items())
MODEL_HELP = (
    f"Architecture (default: the preset's): {', '.join(BUILT_IN_MODELS)}. With cpu-long or cpu-pair (averages of "
    "two networks) it trains that one network alone with their recipe, in the whole budget."
)
BUDGET_HELP = (
    "Minutes the whole command may take: the first epoch is timed and the schedule cut to the epochs "
    "that fit (never more than the preset's or --epochs). Default: the preset's (cpu and cpu-pair 60, cpu-long 240); "
    "0: none. --epochs without it trains exactly those epochs."
)
COMMAND_STARTED = time.time()  # time budgets count from here: the command's start

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
    train = "train"


class FaceMode(StrEnum):
    auto = "auto"
    detect = "detect"
    whole = "whole"


class Precision(StrEnum):
    auto = "auto"
    float32 = "float32"
    mixed_bfloat16 = "mixed_bfloat16"


class Optimizer(StrEnum):
    adam = "adam"
    sgd = "sgd"


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
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite under DATA_DIR/mlflow)."),
]
RegisteredName = Annotated[str, typer.Option(help="Registered model name in MLflow.")]
LEARNING_RATE_HELP = "Override the preset's learning rate (the peak of its schedule)."
OPTIMIZER_HELP = "Override the preset's optimizer: adam, or sgd (SGD with Nesterov momentum 0.9)."


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    from emotion_core.discover import InputError
    from emotion_core.lock import DataDirBusy
    from emotion_core.manifest import ManifestError
    from modelstore import ModelLoadError, TrackingUnavailable

    from .embedded_api import EmbeddedApiError
    from .runner import StageFailed

    return (
        InputError,
        ManifestError,
        DataDirBusy,
        StageFailed,
        TrackingUnavailable,
        ModelLoadError,
        EmbeddedApiError,
        ValueError,
        OSError,
    )


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
    try:
        with environment.prefect_api(data_dir):
            from .pipeline import emotion_pipeline

            result = emotion_pipeline(str(input_root), str(data_dir), until=until.value, **params)
    except (Stopped, KeyboardInterrupt):
        raise  # before _known_errors(), whose imports would delay the exit by seconds
    except _known_errors() as exc:
        fail(str(exc))
    print_results(result, data_dir)
    if os.environ.get("PREFECT_API_URL") and os.environ["PREFECT_API_URL"] != environment.EMBEDDED_API_URL:
        console.print(f"flow runs: {os.environ['PREFECT_API_URL'].removesuffix('/api')}/runs", highlight=False)


def print_results(result: dict, data_dir: Path) -> None:
    """Print each stage's counts and the per-split, per-label table of the manifest."""
    for stage, summary in result.items():
        if stage == "train":
            print_training(summary)
            continue
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


def print_training(result: dict) -> None:
    """Print a training's evaluation and where its model was registered."""
    m = result["metrics"]
    reused = " (already trained; reused)" if result.get("reused") else ""
    from emotion_core.budget import plan_summary

    members = result.get("members") or []
    trained = (
        "the average of " + " and ".join(f"{member['model']} ({member['epochs_run']} epochs)" for member in members)
        if members
        else f"{result['model']}, {result['epochs_run']} epochs (kept {result['kept_epoch']})"
    )
    console.print(
        f"[bold]train[/]{reused}: {trained}; "
        f"{result['eval_split']} accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f} (n={m['n']})",
        highlight=False,
    )
    for i, member in enumerate(members, 1):
        scores = ", ".join(f"{k} {v:.3f}" for k, v in member["scores"].items())
        plan = f"; time budget: {plan_summary(member['plan'])}" if member.get("plan") else ""
        console.print(f"  member {i}, {member['model']}: {scores}{plan}", highlight=False)
    if result.get("plan"):
        console.print(f"time budget: {plan_summary(result['plan'])}", highlight=False)
    console.print(
        f"registered {result['model_uri']} as @{result['alias']} ({result['promotion']}); "
        f"MLflow run {result['run_id']} in {result['tracking_uri']}",
        highlight=False,
    )


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
        model: Annotated[str | None, typer.Option(help=MODEL_HELP, hidden=not show_until)] = None,
        preset: Annotated[str, typer.Option(help=f"Training preset: {PRESET_HELP}.", hidden=not show_until)] = "cpu",
        epochs: Annotated[
            int | None, typer.Option(min=1, help="Override the preset's epochs.", hidden=not show_until)
        ] = None,
        budget_minutes: Annotated[float | None, typer.Option(min=0, help=BUDGET_HELP, hidden=not show_until)] = None,
        learning_rate: Annotated[float | None, typer.Option(help=LEARNING_RATE_HELP, hidden=not show_until)] = None,
        optimizer: Annotated[Optimizer | None, typer.Option(help=OPTIMIZER_HELP, hidden=not show_until)] = None,
        tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.", hidden=not show_until)] = None,
        registered_name: Annotated[str, typer.Option(help="Registered model name.", hidden=not show_until)] = (
            "emotion-classifier"
        ),
    ) -> None:
        training = {
            "model": model,
            "preset": preset,
            "epochs": epochs,
            "budget_minutes": budget_minutes,
            "learning_rate": learning_rate,
            "optimizer": optimizer.value if optimizer else None,
            "started_at": COMMAND_STARTED,
            "tracking_uri": tracking_uri,
            "registered_name": registered_name,
        }
        _run_pipeline(
            input_root,
            data_dir,
            until,
            **training,
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
    _pipeline_command(Stage.train, show_until=True)
)
_STAGE_HELP = {
    Stage.compress: "Re-encode every photo as low-quality JPEG into DATA_DIR/compressed.",
    Stage.crop: "Compress (reusing finished work), then write grayscale face crops to DATA_DIR/faces.",
    Stage.split: "Compress and crop (reusing finished work), then assign the train/val/test split.",
}
for _stage in (Stage.compress, Stage.crop, Stage.split):
    app.command(_stage.value, help=_STAGE_HELP[_stage])(_pipeline_command(_stage, show_until=False))


@app.command("train")
def train_command(
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    model: Annotated[
        str | None,
        typer.Option(help=MODEL_HELP),
    ] = None,
    preset: Annotated[str, typer.Option(help=f"Training preset: {PRESET_HELP}.")] = "cpu",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the preset's epochs.")] = None,
    budget_minutes: Annotated[float | None, typer.Option(min=0, help=BUDGET_HELP)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Override the preset's batch size.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help=LEARNING_RATE_HELP)] = None,
    optimizer: Annotated[Optimizer | None, typer.Option(help=OPTIMIZER_HELP)] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            help="Override the preset's precision (auto: bfloat16 where the CPU has bfloat16 instructions, "
            "1.4x a training step here; else float32)."
        ),
    ] = None,
    tracking_uri: TrackingUri = None,
    registered_name: RegisteredName = "emotion-classifier",
    retrain: Annotated[bool, typer.Option(help="Train again even if this exact training is registered.")] = False,
) -> None:
    """Train a model on DATA_DIR's manifest, log the run to MLflow and register the model."""
    environment.configure(data_dir)
    try:
        with environment.prefect_api(data_dir):
            from .train import train_flow

            result = train_flow(
                str(data_dir),
                model=model,
                preset=preset,
                epochs=epochs,
                budget_minutes=budget_minutes,
                started_at=COMMAND_STARTED,
                batch_size=batch_size,
                learning_rate=learning_rate,
                optimizer=optimizer.value if optimizer else None,
                precision=precision.value if precision else None,
                tracking_uri=tracking_uri,
                registered_name=registered_name,
                retrain=retrain,
            )
    except (Stopped, KeyboardInterrupt):
        raise  # before _known_errors(), whose imports would delay the exit by seconds
    except _known_errors() as exc:
        fail(str(exc))
    print_training(result)
    console.print(result["report"], highlight=False)


class SweepRunner(StrEnum):
    processes = "processes"
    dask = "dask"


@app.command("sweep")
def sweep_command(
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study in all (a rerun adds only the missing).")] = 8,
    space: Annotated[
        Path | None, typer.Option(help="Search-space YAML/JSON (default: the documented default space).")
    ] = None,
    budget_minutes: Annotated[
        float | None, typer.Option(min=0, help="Start no trial after this many minutes (running ones finish).")
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default: from the space and the data).")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: SQLite under DATA_DIR/sweeps).")
    ] = None,
    task_runner: Annotated[SweepRunner, typer.Option(help="Where trials run.")] = SweepRunner.processes,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Trials in parallel (default: 1 on 2 cores or fewer, else 2).")
    ] = None,
    dask_address: DaskAddress = None,
    tracking_uri: TrackingUri = None,
    registered_name: RegisteredName = "emotion-classifier",
) -> None:
    """Search training recipes with Optuna on DATA_DIR's manifest; every trial an MLflow run, the best registered."""
    if space is not None and not space.is_file():
        fail(f"space file {space} does not exist")
    from optuna.exceptions import OptunaError
    from sqlalchemy.exc import SQLAlchemyError

    from emotion_core.study import check_space
    from emotion_core.sweep_space import SpaceError, load_space

    try:
        check_space(load_space(space))  # a bad file fails here, in one line, before anything starts
    except SpaceError as exc:
        fail(str(exc))
    environment.configure(data_dir)
    try:
        with environment.prefect_api(data_dir):
            from .sweep import sweep_flow

            result = sweep_flow(
                str(data_dir),
                trials=trials,
                space_file=str(space.resolve()) if space else None,
                budget_minutes=budget_minutes,
                study_name=study,
                storage=storage,
                task_runner=task_runner.value,
                workers=workers or default_sweep_workers(),
                dask_address=dask_address,
                tracking_uri=tracking_uri,
                registered_name=registered_name,
            )
    except (Stopped, KeyboardInterrupt):
        raise  # before _known_errors(), whose imports would delay the exit by seconds
    except _known_errors() as exc:
        fail(str(exc))
    except (OptunaError, SQLAlchemyError) as exc:
        fail(f"study storage: {str(exc).splitlines()[0]}")
    print_sweep(result)


def default_sweep_workers() -> int:
    """Trials in parallel by default: one where a training already fills the cores, else two."""
    from .runner import default_workers

    return 1 if default_workers() <= 2 else 2


def print_sweep(result: dict) -> None:
    """The study's trial table, what this run did and spent, and the registered best trial."""
    view = Table(title=f"study {result['study']}")
    for col in ("trial", "state", "objective", "epochs", "minutes", "params"):
        view.add_column(col, justify="left" if col in ("state", "params") else "right")
    for row in result["trials"]:
        value = f"{row['value']:.4f}" if row["value"] is not None else "-"
        minutes = f"{row['minutes']:.1f}" if row["minutes"] is not None else "-"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        view.add_row(str(row["trial"]), row["state"], value, str(row["last_step"] or "-"), minutes, params)
    console.print(view)
    budget = f" of a {result['budget_minutes']:g}-minute budget" if result["budget_minutes"] is not None else ""
    stop = "; the budget stopped new trials" if result["budget_hit"] else ""
    retried = f"; retried interrupted trials {result['retried']}" if result["retried"] else ""
    console.print(
        f"ran {result['ran']} trials in {result['minutes_spent']:.1f} min{budget}{stop}{retried}", highlight=False
    )
    best = result["best"]
    if best:
        m = best["metrics"]
        console.print(
            f"best trial {best['trial']}: registered {best['model_uri']} as @{best['alias']} ({best['promotion']}); "
            f"{best['eval_split']} accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}",
            highlight=False,
        )
    else:
        console.print("no trial completed: nothing registered", highlight=False)
    console.print(f"MLflow parent run {result['parent_run_id']} in {result['tracking_uri']}", highlight=False)


@app.command("evaluate")
def evaluate_command(
    data: Annotated[Path, typer.Option(help="Folder-per-class tree of face crops.")],
    model: Annotated[str, typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder.")] = (
        "models:/emotion-classifier@champion"
    ),
    label_map: Annotated[str, typer.Option(help="Rename folder labels, e.g. anger=angry,sadness=sad.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a report.")] = False,
    confusion: Annotated[Path | None, typer.Option(help="Write the confusion matrix image here.")] = None,
    flip: Annotated[bool, typer.Option(help="Average with horizontally flipped faces.")] = False,
    match_sharpness: Annotated[
        bool,
        typer.Option(
            help="Blur faces much sharper than the model's training faces to their sharpness (a stop-gap "
            "for a model trained on blurred faces)."
        ),
    ] = False,
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    tracking_uri: TrackingUri = None,
) -> None:
    """Evaluate a registered model on any labelled folder of face crops."""
    import json

    from emotion_core.labels import parse_label_map

    try:
        mapping = parse_label_map(label_map)
    except ValueError as exc:
        fail(str(exc))
    if not data.is_dir():
        fail(f"data folder {data} does not exist")
    environment.configure(data_dir)
    import modelstore
    from emotion_core.evaluate import compute_metrics, load_labelled_faces, plot_confusion, predict_probs
    from emotion_core.quality import blur_to_match, median_sharpness, sharpness_shift

    try:
        modelstore.configure(environment.mlflow_uri(data_dir, tracking_uri))
        loaded = modelstore.load_model(model, Path(data_dir) / "mlflow" / "model-cache")
        faces = load_labelled_faces(data, loaded.labels, mapping, loaded.input_size)
    except (Stopped, KeyboardInterrupt):
        raise  # before _known_errors(), whose imports would delay the exit by seconds
    except _known_errors() as exc:
        fail(str(exc))
    if not len(faces.x):
        fail(f"no images in {data} have a label the model knows ({', '.join(loaded.labels)}); use --label-map")
    x, sigma = faces.x, 0.0
    if match_sharpness and loaded.train_sharpness:
        x, sigma = blur_to_match(faces.x, loaded.train_sharpness)
        if sigma:
            typer.echo(f"note: faces blurred with sigma {sigma:g} px to match the training faces' sharpness", err=True)
    metrics = compute_metrics(faces.y, predict_probs(loaded.model, x, flip_average=flip).argmax(1), loaded.labels)
    shift = sharpness_shift(loaded.train_sharpness, median_sharpness(x), f"the faces in {data}")
    if shift:
        typer.echo(f"warning: {shift}", err=True)
    if confusion:
        plot_confusion(metrics, confusion, title=f"{loaded.name} v{loaded.version} on {data.name}")
    if as_json:
        print(
            json.dumps(
                {
                    **metrics.as_dict(),
                    "skipped_labels": faces.skipped_labels,
                    "unreadable": faces.unreadable,
                    "warnings": [shift] if shift else [],
                    "matched_blur_sigma": sigma,
                    "model": f"{loaded.name}/{loaded.version}",
                }
            )
        )
        return
    source = " (from the local cache: tracking server unreachable)" if loaded.from_cache else ""
    console.print(f"model {loaded.name} v{loaded.version}{source}; labels: {', '.join(loaded.labels)}", highlight=False)
    for label, n in faces.skipped_labels.items():
        console.print(f"skipped {n} images labelled {label!r}: the model does not know that label", highlight=False)
    console.print(metrics.report(), highlight=False)


@app.command("demo")
def demo_command(
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    data: Annotated[
        Path | None, typer.Option(help="Run on this folder-per-class dataset instead of generated faces.")
    ] = None,
    per_class: Annotated[int, typer.Option(min=2, help="Generated photos per class.")] = 60,
    preset: Annotated[str, typer.Option(help="Training preset.")] = "demo",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the preset's epochs.")] = None,
    frames: Annotated[int, typer.Option(min=1, help="Frames of the generated video.")] = 120,
    workers: Workers = None,
) -> None:
    """The whole system end to end: generated faces -> Prefect pipeline -> MLflow model -> realtime client."""
    if data is not None and not data.is_dir():
        fail(f"dataset folder {data} does not exist")
    environment.configure(data_dir)
    try:
        with environment.prefect_api(data_dir):
            from .demo import run_demo

            result = run_demo(
                data_dir, data, per_class=per_class, preset=preset, epochs=epochs, frames=frames, workers=workers
            )
    except (Stopped, KeyboardInterrupt):
        raise  # before _known_errors(), whose imports would delay the exit by seconds
    except _known_errors() as exc:
        fail(str(exc))
    print_results({k: v for k, v in result.items() if k in ("compress", "crop", "split", "train")}, data_dir)
    rt = result["realtime"]
    console.print(
        f"[bold]realtime[/]: {rt['frames']} frames, {rt['faces']} faces in {rt['tracks']} tracks, "
        f"{rt['fps']:.0f} FPS with {rt['model']}",
        highlight=False,
    )
    console.print(f"annotated video: {rt['annotated']}\nevents:          {rt['events']}", highlight=False)
    console.print(f"finished in {result['elapsed_s']:.0f} s. Browse the results in the UIs:", highlight=False)
    console.print(
        f"  emotion server start -d {data_dir}   # Prefect http://127.0.0.1:4200, MLflow http://127.0.0.1:5000",
        highlight=False,
        soft_wrap=True,
    )
    console.print(
        "The demo's model knows generated faces only. To label real faces (webcam 0), install the shipped "
        f"FER2013 model:\n  emotion model install-pretrained -d {data_dir} && emotion realtime -d {data_dir} "
        "--source 0 --display",
        highlight=False,
        soft_wrap=True,
    )


model_app = typer.Typer(help="The FER2013 model shipped with the package: register it, or replace it.")
app.add_typer(model_app, name="model")


@model_app.command("install-pretrained")
def install_pretrained(
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR), tracking_uri: TrackingUri = None
) -> None:
    """Register the shipped FER2013 model (no download) as models:/emotion-fer2013@champion; idempotent."""
    environment.configure(data_dir)
    import modelstore
    from modelstore.pretrained import PretrainedError, install

    try:
        uri = modelstore.configure(environment.mlflow_uri(data_dir, tracking_uri))
        artifacts = Path(data_dir).resolve() / "mlflow" / "artifacts" if uri.startswith("sqlite:") else None
        done = install(artifacts)
    except (Stopped, KeyboardInterrupt):
        raise
    except (PretrainedError, *_known_errors()) as exc:
        fail(str(exc))
    metrics = done.provenance.get("metrics", {})
    state = "registered" if done.created else "already registered (nothing added):"
    console.print(
        f"{state} models:/{done.name}/{done.version} with aliases {', '.join('@' + a for a in done.aliases)} in {uri}",
        highlight=False,
        soft_wrap=True,
    )
    accuracy, macro_f1 = (metrics.get(f"public_test_{k}", float("nan")) for k in ("accuracy", "macro_f1"))
    console.print(
        f"{done.provenance.get('recipe', '')}; FER2013 public_test accuracy {accuracy:.3f}, macro-F1 {macro_f1:.3f}\n"
        f"FER2013 is research data (see the README's 'Shipped model').\n"
        f"label faces live: emotion realtime -d {data_dir} --source 0 --display",
        highlight=False,
        soft_wrap=True,
    )


@model_app.command("export-pretrained")
def export_pretrained(
    public_test: Annotated[Path, typer.Option(help="FER2013 public_test folder to score the model on.")],
    model: Annotated[str, typer.Option(help="Registered version to ship.")] = "models:/emotion-classifier@champion",
    duplicates: Annotated[
        Path | None, typer.Option(help="FER2013's train_duplicates_of_public_test.tsv (also scored without them).")
    ] = None,
    reproduce: Annotated[str, typer.Option(help="The command that reproduces the model.")] = "make pretrained",
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    tracking_uri: TrackingUri = None,
) -> None:
    """Replace the shipped model with a registered version (maintainers: after retraining)."""
    if not public_test.is_dir():
        fail(f"public_test folder {public_test} does not exist")
    environment.configure(data_dir)
    import modelstore
    from emotion_core.evaluate import read_duplicate_list
    from modelstore.pretrained import SHIPPED_DIR, PretrainedError, export_registered

    try:
        modelstore.configure(environment.mlflow_uri(data_dir, tracking_uri))
        exclude = read_duplicate_list(duplicates) if duplicates else None
        info = export_registered(
            model,
            Path(data_dir) / "mlflow" / "model-cache",
            public_test,
            reproduce,
            Path(__file__).resolve().parent.parent,
            exclude,
        )
    except (Stopped, KeyboardInterrupt):
        raise
    except (PretrainedError, *_known_errors()) as exc:
        fail(str(exc))
    scores = ", ".join(f"{k} {v:.4f}" for k, v in info["metrics"].items())
    console.print(f"shipped model replaced at {SHIPPED_DIR}: {info['recipe']}; {scores}", highlight=False)


server_app = typer.Typer(help="Local Prefect and MLflow servers for a data directory (UIs, deployments).")
app.add_typer(server_app, name="server")
Host = Annotated[
    str, typer.Option(help="Interface to bind. Anything but 127.0.0.1 exposes the servers: put auth in front.")
]


@server_app.command("start")
def server_start(
    data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR),
    host: Host = "127.0.0.1",
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="Prefect API and UI port.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow tracking server and UI port.")] = 5000,
) -> None:
    """Start a Prefect server and an MLflow server in the background; their stores stay in DATA_DIR."""
    from .servers import LOOPBACK, ServerError, start

    if host not in LOOPBACK:
        err_console.print(
            f"warning: binding to {host} exposes both servers without authentication; "
            "see the README's 'Exposing the servers' section",
            highlight=False,
        )
    try:
        states = start(data_dir, host, {"prefect": prefect_port, "mlflow": mlflow_port})
    except (ServerError, OSError) as exc:
        fail(str(exc))
    _print_servers(states)
    prefect_url = next(s.url for s in states if s.name == "prefect")
    console.print(
        f"commands with --data-dir {data_dir} now use these servers; for other shells and workers:\n"
        f"  export PREFECT_API_URL={prefect_url}/api MLFLOW_TRACKING_URI="
        f"{next(s.url for s in states if s.name == 'mlflow')}",
        highlight=False,
        soft_wrap=True,
    )


@server_app.command("status")
def server_status(data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR)) -> None:
    """Show each server's URL, pid and health; exit 1 when one is not running and healthy."""
    from .servers import status

    states = status(data_dir)
    _print_servers(states)
    if not all(s.healthy for s in states):
        raise typer.Exit(1)


@server_app.command("stop")
def server_stop(data_dir: DataDir = Path(environment.DEFAULT_DATA_DIR)) -> None:
    """Stop the servers started for DATA_DIR (their data stays)."""
    from .servers import stop

    stopped = stop(data_dir)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "no server was running", highlight=False)


def _print_servers(states) -> None:
    for state in states:
        console.print(state.line(), highlight=False, soft_wrap=True)


def main() -> None:
    """Console-script entry point (see :mod:`flows.entry`, which installs the signal handlers first)."""
    from .entry import main as entry_main

    entry_main()


def _register_realtime() -> None:
    """``emotion realtime`` is the standalone client's own command (it imports no Prefect)."""
    from realtime.cli import realtime

    app.command("realtime", help="Label faces live from a camera, video, folder or stream (python -m realtime).")(
        realtime
    )


_register_realtime()
