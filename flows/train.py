"""The train stage: manifest -> packed faces -> Keras model -> MLflow run -> registered version."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from emotion_core import stopping
from emotion_core.budget import plan_summary
from emotion_core.dataset import PackedFaces, pack_faces
from emotion_core.imageio import atomic_write
from emotion_core.lock import data_dir_lock
from emotion_core.manifest import read_manifest
from emotion_core.train import (
    PRESETS,
    TrainConfig,
    TrainOutcome,
    check_trainable,
    describe_members,
    members_in_budget,
    train,
    train_ensemble,
)

from .environment import DEFAULT_DATA_DIR, mlflow_uri
from .stages import manifest_path, sweep_stale_temps

DONE_NAME = "registered.json"


def training_config(
    preset: str,
    model: str | None,
    epochs: int | None,
    batch_size: int | None,
    learning_rate: float | None,
    precision: str | None = None,
    budget_minutes: float | None = None,
    optimizer: str | None = None,
) -> TrainConfig:
    """A preset with the given overrides applied. ``budget_minutes`` 0 turns the preset's time
    budget off; epochs given without a budget are trained as given (no budget). On an ensemble
    preset (``cpu-long``) the overrides apply to every member, and a ``model`` trains that one
    network alone with the members' recipe (the first's) within the ensemble's whole budget."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if budget_minutes is not None and budget_minutes < 0:
        raise ValueError(f"the time budget must be positive minutes (or 0: none), got {budget_minutes}")
    config = PRESETS[preset]
    if config.members and model is not None:
        config = replace(config.members[0], model=model, budget_minutes=config.budget_minutes)
    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "precision": precision,
        "optimizer": optimizer,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    if config.members:
        config = replace(config, members=tuple(replace(member, **given) for member in config.members))
    else:
        config = replace(config, model=model or config.model, **given)
    if budget_minutes is not None or epochs is not None:
        config = replace(config, budget_minutes=budget_minutes or None)
    if any(c.epochs < 1 or c.batch_size < 1 for c in (config.members or (config,))):
        raise ValueError("epochs and batch size must be at least 1")
    return config.resolved()


@task(name="pack-faces", cache_policy=NO_CACHE)
def pack_task(data_dir: str, size: int) -> PackedFaces:
    """Pack the manifest's face crops into the uint8 cache (reused while the manifest is unchanged)."""
    df, info = read_manifest(manifest_path(data_dir))
    packed = pack_faces(df, info.labels, data_dir, size)
    get_run_logger().info("packed faces %s: %s", packed.key, packed.counts())
    return packed


@task(name="fit", cache_policy=NO_CACHE)
def fit_task(
    packed: PackedFaces, config: TrainConfig, work_dir: str, run_id: str, started_at: float | None = None
) -> TrainOutcome:
    """Train with per-epoch metrics streamed to the MLflow run; resumes from the last finished epoch.
    A time budget counts from ``started_at`` (Unix time; default: now)."""
    import mlflow

    from modelstore.runs import EpochLogger

    with mlflow.start_run(run_id=run_id):
        outcome = train(packed, config, work_dir, callbacks=[EpochLogger()], started_at=started_at)
    if outcome.resumed_from_epoch:
        get_run_logger().info("resumed training after epoch %d", outcome.resumed_from_epoch)
    if outcome.plan:
        get_run_logger().info("time budget: %s", plan_summary(outcome.plan))
    return outcome


def evaluation_split(packed: PackedFaces) -> str:
    """The split a training is scored on: test, else val, else train."""
    counts = packed.counts()
    return "test" if counts["test"] else "val" if counts["val"] else "train"


@task(name="average-members", cache_policy=NO_CACHE)
def ensemble_task(config: TrainConfig, members: list[TrainOutcome], work_dir: str) -> TrainOutcome:
    """One model averaging the trained members' probabilities (:func:`emotion_core.train.train_ensemble`)."""
    return train_ensemble(config, members, work_dir)


@task(name="score-member", cache_policy=NO_CACHE)
def score_member_task(packed: PackedFaces, outcome: TrainOutcome, run_id: str) -> dict[str, float]:
    """An ensemble member's accuracy and macro-F1 on the split the ensemble is scored on
    (:func:`evaluation_split`), logged to its own run once."""
    import mlflow

    from emotion_core.evaluate import compute_metrics, predict_probs

    split = evaluation_split(packed)
    x_eval, y_eval = packed.part(split)
    metrics = compute_metrics(y_eval, predict_probs(outcome.model, x_eval).argmax(1), packed.labels)
    scores = {f"{split}_accuracy": metrics.accuracy, f"{split}_macro_f1": metrics.macro_f1}
    if not set(scores) <= set(mlflow.MlflowClient().get_run(run_id).data.metrics):
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({**scores, "kept_epoch": outcome.kept_epoch})
    return scores


def train_members(
    packed: PackedFaces,
    config: TrainConfig,
    data_dir: str,
    experiment_id: str,
    preset: str,
    started_at: float,
    parent_run_id: str,
    retrain: bool = False,
) -> list[dict]:
    """Train (or find trained, or resume) each member of an ensemble in its own work folder and
    MLflow run (a child of the ensemble's), within its share of the budget (``members_in_budget``):
    the first's counted from ``started_at``, each later one's from its own start."""
    members = []
    for i, member in enumerate(members_in_budget(config)):
        work_dir = Path(data_dir) / "training" / member.key(packed.key)
        if retrain and work_dir.exists():
            shutil.rmtree(work_dir)
        run_id = start_or_resume_run(
            work_dir,
            experiment_id,
            member,
            packed,
            preset,
            run_name=f"member-{i + 1}-{member.model}-{work_dir.name[:8]}",
            tags={"emotion.role": "ensemble-member", "mlflow.parentRunId": parent_run_id},
        )
        stopping.raise_if_requested()
        outcome = fit_task(packed, member, str(work_dir), run_id, started_at if i == 0 else None)
        scores = score_member_task(packed, outcome, run_id)
        get_run_logger().info(
            "member %d (%s): %s", i + 1, member.model, ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
        )
        members.append({"model": member.model, "outcome": outcome, "run_id": run_id, "scores": scores})
    return members


def member_summary(member: dict) -> dict:
    """What a registration records of one ensemble member."""
    outcome = member["outcome"]
    return {
        "model": member["model"],
        "run_id": member["run_id"],
        "epochs_run": len(outcome.history.get("loss", [])),
        "kept_epoch": outcome.kept_epoch,
        "plan": outcome.plan,
        "scores": member["scores"],
    }


@task(name="evaluate-and-register", cache_policy=NO_CACHE)
def register_task(
    packed: PackedFaces,
    outcome: TrainOutcome,
    config: TrainConfig,
    run_id: str,
    registered_name: str,
    cache_dir: str,
    preset: str = "cpu",
    members: list[dict] | None = None,
) -> dict:
    """Evaluate on the test split, log metrics and report images, log and register the model, set
    its alias. An ensemble's ``members`` (:func:`train_members`) are described in its run and version."""
    import mlflow

    from emotion_core.evaluate import compute_metrics, plot_confusion, plot_history, predict_probs
    from emotion_core.quality import median_sharpness, sharpness_shift
    from modelstore import ModelLoadError, load_model
    from modelstore.runs import describe_version, log_model, log_report_files, promote, version_summary

    split = evaluation_split(packed)
    x_eval, y_eval = packed.part(split)
    model = outcome.model
    metrics = compute_metrics(y_eval, predict_probs(model, x_eval).argmax(1), packed.labels)
    x_train, y_train = packed.part("train")
    sample = slice(0, min(len(x_train), 2000))
    train_sample = compute_metrics(y_train[sample], predict_probs(model, x_train[sample]).argmax(1), packed.labels)
    sharp = {s: median_sharpness(packed.part(s)[0]) for s in packed.counts()}
    warnings = [w for s in ("val", "test") if (w := sharpness_shift(sharp["train"], sharp[s], f"the {s} faces"))]
    for warning in warnings:
        get_run_logger().warning(warning)

    def champion_score(uri: str) -> float | None:
        try:
            champion = load_model(uri, cache_dir)
        except ModelLoadError:
            return None
        if champion.labels != packed.labels or champion.input_size != config.input_size:
            return None
        return compute_metrics(y_eval, predict_probs(champion.model, x_eval).argmax(1), packed.labels).macro_f1

    summaries = [member_summary(member) for member in members or []]
    epochs_run = sum(m["epochs_run"] for m in summaries) if summaries else len(outcome.history.get("loss", []))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                f"{split}_accuracy": metrics.accuracy,
                f"{split}_macro_f1": metrics.macro_f1,
                **{f"{split}_recall_{label}": r for label, r in metrics.per_class_recall.items()},
                "train_sample_inference_accuracy": train_sample.accuracy,
                **({} if summaries else {"kept_epoch": outcome.kept_epoch}),
                **{f"member_{i}_{k}": v for i, m in enumerate(summaries, 1) for k, v in m["scores"].items()},
                **{f"sharpness_median_{s}": v for s, v in sharp.items() if v is not None},
            }
        )
        if warnings:
            mlflow.set_tag("data_warning", " | ".join(warnings))
        if outcome.plan:
            mlflow.log_params({f"plan_{k}": v for k, v in outcome.plan.items()})
            mlflow.set_tag("time_budget", plan_summary(outcome.plan))
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp)
            plot_confusion(metrics, report / "confusion_matrix.png", title=f"{split} split")
            if outcome.history:  # an ensemble's curves are its members' (in their runs)
                plot_history(outcome.history, report / "training_curves.png")
            (report / "classification_report.txt").write_text(metrics.report() + "\n")
            (report / "label_map.json").write_text(json.dumps(dict(enumerate(packed.labels)), ensure_ascii=False))
            log_report_files(report)
        version = log_model(
            model,
            packed.labels,
            config.input_size,
            x_train[0],
            registered_name,
            extra_metadata={"train_sharpness_median": sharp["train"]},
        )
        registration = promote(registered_name, version, metrics.macro_f1, packed.labels, champion_score)
        description, tags = version_summary(
            packed.labels,
            {f"{split}_accuracy": metrics.accuracy, f"{split}_macro_f1": metrics.macro_f1},
            {"manifest_hash": packed.key, **{f"n_{s}": n for s, n in packed.counts().items()}},
            f"{preset} preset: "
            + (
                "the average of " + ", ".join(_member_line(m) for m in summaries)
                if summaries
                else f"{config.model}, {epochs_run} epochs (kept epoch {outcome.kept_epoch}: {config.keep}"
                + (f"; time budget: {plan_summary(outcome.plan)}" if outcome.plan else "")
                + ")"
            )
            + f", run {run_id}",
        )
        describe_version(registered_name, version, description, {**tags, "preset": preset, "model": config.model})
        mlflow.set_tags(
            {
                "registered_model": registered_name,
                "registered_version": version,
                "alias": registration.alias,
                "promotion": registration.reason,
            }
        )
    return {
        "stage": "train",
        "run_id": run_id,
        "model": config.model,
        "eval_split": split,
        "metrics": metrics.as_dict(),
        "train_sample_inference_accuracy": train_sample.accuracy,
        "warnings": warnings,
        "kept_epoch": None if summaries else outcome.kept_epoch,
        "epochs_run": epochs_run,
        "plan": outcome.plan,
        "members": summaries,
        "registered_model": registered_name,
        "version": version,
        "alias": registration.alias,
        "promotion": registration.reason,
        "model_uri": f"models:/{registered_name}/{version}",
        "report": metrics.report(),
    }


def _member_line(member: dict) -> str:
    plan = f"; time budget: {plan_summary(member['plan'])}" if member["plan"] else ""
    epochs = f"{member['epochs_run']} epochs, kept epoch {member['kept_epoch']}"
    return f"{member['model']} ({epochs}{plan}; run {member['run_id']})"


def start_or_resume_run(
    work_dir: Path,
    experiment_id: str,
    config: TrainConfig,
    packed: PackedFaces,
    preset: str,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    extra_params: dict | None = None,
    adopted_run_id: str | None = None,
) -> str:
    """The MLflow run of the training in ``work_dir``: created with its params on the first try,
    found again (``work_dir/mlflow_run_id``) when an interrupted training resumes. With
    ``adopted_run_id`` (a run created before a kill left no marker) that run gets the params."""
    import mlflow

    from modelstore.runs import current_commit, package_versions

    marker = work_dir / "mlflow_run_id"
    if marker.is_file():
        return marker.read_text().strip()
    client = mlflow.MlflowClient()
    commit = current_commit(Path(__file__).resolve().parent.parent)
    run_id = (
        adopted_run_id
        or client.create_run(
            experiment_id,
            run_name=run_name or f"{config.model}-{work_dir.name[:8]}",
            tags={"mlflow.source.git.commit": commit, **(tags or {})},
        ).info.run_id
    )
    recipe = asdict(config)
    if config.members:  # each member's recipe is in its own run
        recipe = {k: recipe[k] for k in ("model", "budget_minutes", "input_size")} | {
            "members": describe_members(config)
        }
    params = {
        **recipe,
        "preset": preset,
        "labels": ",".join(packed.labels),
        "n_classes": len(packed.labels),
        "manifest_hash": packed.key,
        **{f"n_{split}": n for split, n in packed.counts().items()},
        **package_versions(),
        **(extra_params or {}),
    }
    client.log_batch(run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    work_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(marker, run_id.encode())
    return run_id


@flow(name="train", log_prints=True)
def train_flow(
    data_dir: str = DEFAULT_DATA_DIR,
    model: str | None = None,
    preset: str = "cpu",
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    precision: str | None = None,
    tracking_uri: str | None = None,
    registered_name: str = "emotion-classifier",
    experiment: str = "emotion-pipeline",
    retrain: bool = False,
    budget_minutes: float | None = None,
    started_at: float | None = None,
    optimizer: str | None = None,
) -> dict:
    """Stage 4: train a model on the manifest's train split, log the run to MLflow and register the model.

    A training whose data and parameters are unchanged is not repeated (its registration is
    returned) unless ``retrain``; an interrupted one resumes from its last finished epoch. The
    preset's time budget (or ``budget_minutes``; 0: none) counts from ``started_at`` (Unix time,
    default: this flow's start) and cuts the schedule to the epochs that fit. An ensemble preset
    (``cpu-long``) trains its members one after another, each in its own (child) MLflow run, work
    folder and share of the budget, and registers the model averaging them; ``retrain`` retrains
    the members too.
    """
    import modelstore

    started_at = started_at or time.time()
    config = training_config(preset, model, epochs, batch_size, learning_rate, precision, budget_minutes, optimizer)
    uri = modelstore.configure(mlflow_uri(data_dir, tracking_uri))
    local_store = uri.startswith("sqlite:")
    with data_dir_lock(data_dir):
        stopping.raise_if_requested()
        sweep_stale_temps(data_dir, "cache", "training")
        packed = pack_task(str(data_dir), config.input_size)
        check_trainable(packed)
        work_dir = Path(data_dir) / "training" / config.key(packed.key)
        done = work_dir / DONE_NAME
        if done.is_file() and not retrain:
            result = json.loads(done.read_text())
            get_run_logger().info("this training is already registered as %s", result["model_uri"])
            return {**result, "reused": True}
        if retrain and work_dir.exists():
            shutil.rmtree(work_dir)
        artifacts = Path(data_dir).resolve() / "mlflow" / "artifacts" if local_store else None
        experiment_id = modelstore.ensure_experiment(experiment, artifacts)
        run_id = start_or_resume_run(work_dir, experiment_id, config, packed, preset)
        members = None
        if config.members:
            members = train_members(packed, config, str(data_dir), experiment_id, preset, started_at, run_id, retrain)
            outcome = ensemble_task(config, [member["outcome"] for member in members], str(work_dir))
        else:
            outcome = fit_task(packed, config, str(work_dir), run_id, started_at)
        cache = str(Path(data_dir) / "mlflow" / "model-cache")
        result = register_task(packed, outcome, config, run_id, registered_name, cache, preset, members)
        result["tracking_uri"] = uri
        atomic_write(done, json.dumps(result).encode())
        shutil.rmtree(work_dir / "backup", ignore_errors=True)
    return {**result, "reused": False}
