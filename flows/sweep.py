"""The sweep flow: an Optuna study of train-stage recipes, trials in parallel on the task runner,
one MLflow parent run per sweep and a nested child run per trial; the best trial is registered."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.futures import as_completed

from emotion_core import stopping
from emotion_core.imageio import atomic_write
from emotion_core.lock import data_dir_lock
from emotion_core.sweep_space import SearchSpace, load_space
from emotion_core.train import check_trainable, train

from .environment import DEFAULT_DATA_DIR, mlflow_uri
from .runner import RunnerSpec, default_workers
from .stages import manifest_path, sweep_stale_temps
from .train import DONE_NAME, pack_task, register_task, start_or_resume_run

SWEEP_RUNNERS = ("processes", "dask")


def study_name_for(space: SearchSpace, data_key: str) -> str:
    """The default study name: the same space on the same data continues the same study."""
    return f"sweep-{space.fingerprint()}-{data_key.split('-')[0][:8]}"


def trial_threads(runner: RunnerSpec) -> int | None:
    """CPU threads for each trial: the machine's cores shared out among the local workers (None on
    a Dask cluster given by address: its workers keep their own settings)."""
    if runner.dask_address:
        return None
    return max(1, default_workers() // runner.parallelism)


@flow(name="sweep", log_prints=True)
def sweep_flow(
    data_dir: str = DEFAULT_DATA_DIR,
    trials: int = 8,
    space_file: str | None = None,
    budget_minutes: float | None = None,
    study_name: str | None = None,
    storage: str | None = None,
    task_runner: str = "processes",
    workers: int | None = None,
    dask_address: str | None = None,
    tracking_uri: str | None = None,
    registered_name: str = "emotion-classifier",
    experiment: str = "emotion-pipeline",
) -> dict:
    """Search training recipes: up to ``trials`` trainings of the manifest's packed faces, chosen by
    Optuna from the search space (``space_file``, else the default space) and pruned by its pruner.

    Rerunning continues the study: finished and pruned trials are kept, a trial interrupted with an
    earlier run is retried from its last epoch checkpoint, and the total never exceeds ``trials``.
    No trial starts once ``budget_minutes`` have passed (running ones finish). The best completed
    trial's model is registered under the champion/challenger rule of ``emotion train``.
    """
    import modelstore
    from emotion_core.study import counted_trials, default_storage, open_study, retry_interrupted

    if task_runner not in SWEEP_RUNNERS:
        raise ValueError(
            f"sweep trials run in processes of their own (TensorFlow's seeds and threads are per process): "
            f"use --task-runner {' or '.join(SWEEP_RUNNERS)}, not {task_runner!r}"
        )
    if trials < 1:
        raise ValueError("--trials must be at least 1")
    space = load_space(space_file)
    uri = modelstore.configure(mlflow_uri(data_dir, tracking_uri))
    logger = get_run_logger()
    started = time.monotonic()
    with data_dir_lock(data_dir):
        stopping.raise_if_requested()
        sweep_stale_temps(data_dir, "cache", "training", "sweeps")
        packed = pack_task(str(data_dir), space.config({}).input_size)
        check_trainable(packed)
        name = study_name or study_name_for(space, packed.key)
        storage_url = storage or default_storage(data_dir)
        study = open_study(space, name, storage_url, create=True)
        retried = retry_interrupted(study)
        if retried:
            logger.warning("trials %s were interrupted with an earlier run: retrying them", retried)
        local_store = uri.startswith("sqlite:")
        artifacts = Path(data_dir).resolve() / "mlflow" / "artifacts" if local_store else None
        experiment_id = modelstore.ensure_experiment(experiment, artifacts)
        parent_id = _parent_run(study, experiment_id, space, name, storage_url)
        runner = RunnerSpec(task_runner, workers, dask_address)
        threads = trial_threads(runner)
        sweep_root = Path(data_dir).resolve() / "sweeps" / name
        from tasks.trial import train_trial

        ran: list[dict] = []
        budget_hit = False

        def launch(trial_runner):
            trial, config, work, run_id = _launch(study, space, packed, sweep_root, experiment_id, parent_id)
            parameters = {
                "number": trial.number,
                "config": config,
                "work_dir": str(work),
                "data_dir": str(Path(data_dir).resolve()),
                "manifest": str(manifest_path(data_dir).resolve()),
                "storage": storage_url,
                "study_name": name,
                "space": space,
                "run_id": run_id,
                "tracking_uri": uri,
                "threads": threads,
            }
            logger.info("trial %d started: %s", trial.number, trial.params)
            return trial_runner.submit(train_trial, parameters=parameters), (trial.number, run_id)

        if len(counted_trials(study)) < trials:  # a finished study's rerun starts no workers
            budget_hit = _run_trials(study, runner, trials, budget_minutes, started, launch, ran, logger)
        best = _best(study)
        registration = _register_best(study, best, space, packed, registered_name, data_dir) if best else None
        rows = _trial_rows(study)
        _log_parent(parent_id, space, name, rows, best, registration, study)
    summary = {
        "stage": "sweep",
        "study": name,
        "storage": storage_url,
        "parent_run_id": parent_id,
        "trials": rows,
        "ran": len(ran),
        "retried": retried,
        "minutes_spent": round((time.monotonic() - started) / 60, 2),
        "budget_minutes": budget_minutes,
        "budget_hit": budget_hit,
        "best": registration,
        "tracking_uri": uri,
    }
    return summary


def _run_trials(
    study, runner: RunnerSpec, trials: int, budget_minutes, started: float, launch, ran: list, logger
) -> bool:
    """Keep ``runner.parallelism`` trials running until the study has ``trials`` or the budget is
    spent; record each as it ends. Returns whether the budget stopped new trials."""
    from emotion_core.study import counted_trials

    budget_hit = False
    with runner.build() as trial_runner:
        running: dict = {}
        while True:
            stopping.raise_if_requested()
            while len(running) < runner.parallelism and len(counted_trials(study)) < trials:
                if budget_minutes is not None and (time.monotonic() - started) / 60 >= budget_minutes:
                    budget_hit = True
                    break
                future, ids = launch(trial_runner)
                running[future] = ids
            if not running:
                return budget_hit
            future = next(as_completed(list(running)))
            number, run_id = running.pop(future)
            ran.append(_record(study, future, number, run_id, logger))


def _launch(study, space: SearchSpace, packed, sweep_root: Path, experiment_id: str, parent_id: str):
    """Ask Optuna for the next trial (a queued or retried one first); its config, folder and child run."""
    from emotion_core.study import original_number
    from emotion_core.sweep_space import suggest

    trial = study.ask()
    overrides = suggest(trial, space)
    config = space.config(overrides)
    work = Path(trial.user_attrs.get("work_dir") or sweep_root / f"trial-{trial.number:03d}-{config.key(packed.key)}")
    trial.set_user_attr("work_dir", str(work))  # before the run exists: a retry finds both again
    run_id = start_or_resume_run(
        work,
        experiment_id,
        config,
        packed,
        preset=space.preset,
        run_name=f"trial-{original_number(trial)}-{config.model}",
        tags={"mlflow.parentRunId": parent_id, "sweep.study": study.study_name, "sweep.work_dir": str(work)},
        extra_params={f"trial.{k}": v for k, v in overrides.items()},
        adopted_run_id=_adopt_child_run(experiment_id, work),
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    import mlflow

    mlflow.MlflowClient().set_tag(run_id, "sweep.trial", str(trial.number))
    return trial, config, work, run_id


def _adopt_child_run(experiment_id: str, work: Path) -> str | None:
    """A sweep killed between creating a trial's MLflow run and recording its id in the trial's
    folder left the run without the marker (and perhaps without its params): find it by its folder
    tag so the retry goes on in it and logs the params (the same values: MLflow accepts them again)."""
    import mlflow

    if (work / "mlflow_run_id").is_file():
        return None
    folder = str(work).replace("'", "\\'")
    found = mlflow.MlflowClient().search_runs(
        [experiment_id], filter_string=f"tags.`sweep.work_dir` = '{folder}'", max_results=1
    )
    return found[0].info.run_id if found else None


def _record(study, future, number: int, run_id: str, logger) -> dict:
    """Mark a trial's MLflow run with how it ended (completed, pruned or failed), then tell Optuna:
    in that order, so a sweep killed in between retries the trial (instantly: its model is saved)
    instead of leaving a finished trial whose run says nothing."""
    import mlflow
    from optuna.trial import TrialState

    client = mlflow.MlflowClient()
    try:
        result = future.result()
    except Exception as exc:  # the trial's error, recorded; the sweep goes on
        client.set_tag(run_id, "sweep.outcome", "failed")
        client.set_tag(run_id, "sweep.error", str(exc)[:4000])
        client.set_terminated(run_id, "FAILED")
        study.tell(number, state=TrialState.FAIL)
        logger.error("trial %d failed: %s", number, exc)
        return {"number": number, "state": "failed", "error": str(exc)}
    pruned = result["state"] == "pruned"
    client.set_tag(run_id, "sweep.outcome", result["state"])
    client.log_metric(run_id, "sweep_objective", result["value"])
    client.set_terminated(run_id, "KILLED" if pruned else "FINISHED")
    if pruned:
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, result["value"])
    logger.info("trial %d %s: %.4f after %d epochs", number, result["state"], result["value"], result["epochs_run"])
    return result


def _best(study):
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def _register_best(study, best, space: SearchSpace, packed, registered_name: str, data_dir: str) -> dict:
    """Evaluate the best trial on the test split and register it (champion/challenger), once."""
    work = Path(best.user_attrs["work_dir"])
    done = work / DONE_NAME
    if done.is_file():
        return {**json.loads(done.read_text()), "trial": best.number, "reused": True}
    config = space.config({k: v for k, v in best.params.items()})
    outcome = train(packed, config, work)  # the finished model, read back from the trial's folder
    cache_dir = str(Path(data_dir) / "mlflow" / "model-cache")
    result = register_task(
        packed,
        outcome,
        config,
        best.user_attrs["mlflow_run_id"],
        registered_name,
        cache_dir,
        f"sweep {study.study_name}",
    )
    result = {**result, "trial": best.number}
    atomic_write(done, json.dumps(result).encode())
    return {**result, "reused": False}


def _trial_rows(study) -> list[dict]:
    from emotion_core.study import original_number, retried_numbers

    retried = retried_numbers(study)
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.number in retried or t.state.name == "WAITING":
            continue
        minutes = (t.datetime_complete - t.datetime_start).total_seconds() / 60 if t.datetime_complete else None
        rows.append(
            {
                "trial": t.number,
                "first_try": original_number(t),
                "state": t.state.name.lower(),
                "value": t.value,
                "last_step": t.last_step,
                "params": t.params,
                "minutes": round(minutes, 2) if minutes is not None else None,
                "run_id": t.user_attrs.get("mlflow_run_id"),
            }
        )
    return rows


def _parent_run(study, experiment_id: str, space: SearchSpace, name: str, storage_url: str) -> str:
    """The sweep's MLflow parent run (made once per study, found again on a rerun)."""
    import mlflow

    client = mlflow.MlflowClient()
    known = study.user_attrs.get("mlflow_parent_run_id")
    if known:
        try:
            client.get_run(known)
            return known
        except mlflow.exceptions.MlflowException:
            pass  # another tracking store than the study was started with: a new parent there
    run = client.create_run(experiment_id, run_name=name, tags={"sweep.study": name, "sweep.role": "parent"})
    params = {
        "study": name,
        "storage": storage_url if storage_url.startswith("sqlite:") else storage_url.split("@")[-1],
        "preset": space.preset,
        "objective": space.objective,
        "direction": space.direction,
        "sampler": json.dumps(space.sampler),
        "pruner": json.dumps(space.pruner),
        "space_fingerprint": space.fingerprint(),
    }
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def _log_parent(parent_id: str, space: SearchSpace, name: str, rows: list[dict], best, registration, study) -> None:
    """The parent run's summary: best trial, trial table, space and Optuna's plots as artefacts."""
    import mlflow
    import yaml

    client = mlflow.MlflowClient()
    states = [r["state"] for r in rows]
    client.log_metric(parent_id, "trials_completed", states.count("complete"))
    client.log_metric(parent_id, "trials_pruned", states.count("pruned"))
    client.log_metric(parent_id, "trials_failed", states.count("fail"))
    if best is not None:
        client.log_metric(parent_id, "best_value", best.value)
        client.set_tag(parent_id, "sweep.best_trial", str(best.number))
        client.set_tag(parent_id, "sweep.best_params", json.dumps(best.params))
    if registration:
        client.set_tag(parent_id, "sweep.best_model_uri", registration["model_uri"])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "space.yaml").write_text(yaml.safe_dump(space.as_dict(), sort_keys=False))
        (out / "trials.json").write_text(json.dumps(rows, indent=1, default=str))
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        _plots(study, out)
        client.log_artifacts(parent_id, str(out), artifact_path="sweep")
    client.set_terminated(parent_id, "FINISHED")


def _plots(study, out: Path) -> None:
    """Optuna's optimisation history and parallel-coordinate plots (matplotlib), where it can draw them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    warnings.filterwarnings("ignore", category=UserWarning, module="optuna.visualization")
    for name, plot in (
        ("optimization_history", plots.plot_optimization_history),
        ("parallel_coordinate", plots.plot_parallel_coordinate),
    ):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError):  # too few completed trials for this plot
            continue
        axes.figure.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
