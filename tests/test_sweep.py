"""`emotion sweep`: search-space files, Optuna trial accounting, and real sweeps on a FER2013 sample
(2 trials in parallel on a local Dask cluster, pruning, MLflow parent and child runs, the best
registered, rerun and kill -9 resume)."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from emotion_core.study import (
    baseline_params,
    check_space,
    counted_trials,
    make_pruning_reporter,
    open_study,
    original_number,
    retry_interrupted,
)
from emotion_core.sweep_space import SpaceError, load_space, parse_space, suggest
from tests.conftest import ROOT
from tests.test_stopping import clean_env, split_cmd

# Four tiny trials: two queued first (sound recipes), then one whose learning rate (1e30, the top of
# a range no real space would have) wrecks the network in its first step, then one drawn by the
# sampler (pruned or completed, whatever it draws). Trials are ranked and pruned on val loss: on 36
# val faces accuracy after 2 epochs ties (every recipe predicts the largest class), the loss cannot.
# The median pruner compares each epoch from the first with the trials completed so far; with 2
# workers the third trial can only start once one of the first two has finished, and the first to
# finish completes (there is nothing to compare it with), so the wrecked recipe (val loss ~1e29, or
# NaN, which is pruned too) is pruned whatever the order the others finish in.
TINY_SPACE = """\
preset: smoke
objective: val_loss
sampler: {type: random, seed: 7}
pruner: {type: median, n_startup_trials: 1, n_warmup_steps: 1}
params:
  epochs: 3
  model: vgg_lite
  learning_rate: {low: 1.0e-4, high: 1.0e+30, log: true}
  batch_size: {choices: [32, 64]}
enqueue:
  - {learning_rate: 2.0e-3, batch_size: 32}
  - {learning_rate: 1.5e-3, batch_size: 32}
  - {learning_rate: 1.0e+30, batch_size: 32}
"""


def write_space(tmp_path: Path, text: str = TINY_SPACE) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# --- search-space files ----------------------------------------------------------------------------


def test_default_space_is_valid_and_its_baseline_is_the_preset():
    space = load_space()
    check_space(space)
    assert space.preset == "cpu" and space.direction == "maximize"
    (baseline,) = baseline_params(space)
    preset = space.config({})
    assert baseline["model"] == preset.model and baseline["learning_rate"] == preset.learning_rate
    assert space.config(baseline) == preset  # the queued first trial is the preset itself


def test_suggestions_stay_in_the_space_and_become_configs():
    space = load_space()
    study = optuna.create_study(direction=space.direction, sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        overrides = suggest(study.ask(), space)
        assert overrides["model"] in ("vgg_lite", "vgg_mid", "vgg_wide")
        assert 3e-4 <= overrides["learning_rate"] <= 3e-3
        assert overrides["batch_size"] in (32, 64, 128)
        config = space.config(overrides)
        assert config.epochs == 30 and config.crop in (32, 40, 48)
        assert config.budget_minutes is None  # trials train their epochs, not the cpu preset's hour


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("params: {epochz: 3}", "params.epochz"),
        ("params: {seed: 3}", "params.seed"),
        ("params: {budget_minutes: 60}", "params.budget_minutes"),
        ("params: {learning_rate: {low: 0.1, high: 0.01}}", "params.learning_rate"),
        ("params: {learning_rate: {low: 0.0, high: 0.01, log: true}}", "params.learning_rate.log"),
        ("params: {learning_rate: {low: 0.001}}", "params.learning_rate"),
        ("params: {model: {choices: [vgg_mid, resnet9000]}}", "params.model.choices"),
        ("params: {batch_size: {choices: [32, big]}}", "params.batch_size.choices"),
        ("params: {learning_rate: {low: 0.001, high: 0.01, steps: 2}}", "params.learning_rate.steps"),
        ("params: {epochs: 3}\nenqueue: [{epochs: 4}]", "enqueue[0].epochs"),
        ("params: {learning_rate: {low: 0.01, high: 0.1}}\nenqueue: [{learning_rate: 1}]", "enqueue[0].learning_rate"),
        ("params: {batch_size: {choices: [32, 64]}}\nenqueue: [{}, {batch_size: 16}]", "enqueue[1].batch_size"),
        ("params: {label_smoothing: {low: 0.0, high: 0.2}}\nenqueue: [{label_smoothing: null}]", "enqueue[0].label"),
        ("params: {epochs: {low: 10, high: 40, step: 10}}\nenqueue: [{epochs: 25}]", "enqueue[0].epochs"),
        ("params: {epochs: 3}\nprunner: median", "prunner"),
        ("params: {epochs: 3}\npreset: turbo", "preset"),
        ("params: {epochs: 3}\npreset: cpu-long", "preset: 'cpu-long' trains an ensemble"),
        ("params: {epochs: 3}\npruner: {type: cheetah}", "pruner.type"),
        ("params: {crop: 60}", "params"),
        ("params: {epochs: 3", "line"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_bad_space_files_name_the_key(tmp_path, text, named):
    with pytest.raises(SpaceError, match="space file .*space.yaml") as error:
        load_space(write_space(tmp_path, text))
    assert named in str(error.value)


def test_bad_pruner_arguments_name_the_key(tmp_path):
    space = load_space(write_space(tmp_path, "params: {epochs: 3}\npruner: {type: median, n_startup: 1}"))
    with pytest.raises(SpaceError, match="pruner: .*n_startup"):
        check_space(space)


def test_cli_rejects_a_bad_space_in_one_line(tmp_path):
    from flows.cli import app

    result = CliRunner().invoke(
        app, ["sweep", "-d", str(tmp_path / "d"), "--space", str(write_space(tmp_path, "x: 1"))]
    )
    assert result.exit_code == 2
    assert "x: unknown key" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "d").exists()  # nothing started, nothing written
    missing = CliRunner().invoke(app, ["sweep", "-d", str(tmp_path / "d"), "--space", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_diverged_epoch_is_reported_as_nan_and_pruned_whatever_its_score():
    import keras

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(1, 1))
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1.0)}
    params = {"learning_rate": 1e-3}
    done = optuna.trial.create_trial(params=params, distributions=dist, value=0.5, intermediate_values={1: 0.4})
    study.add_trial(done)
    outcomes = {}
    for name, loss in (("finite", 1.2), ("nan", math.nan), ("inf", math.inf)):
        trial = study.ask(dist)
        reporter = make_pruning_reporter(trial, "val_accuracy", {})
        reporter.set_model(keras.Sequential())
        reporter.on_epoch_end(0, {"loss": loss, "val_accuracy": 0.9})  # above the completed trial's 0.4
        outcomes[name] = (reporter.pruned_at, study.trials[trial.number].intermediate_values[1])
    assert outcomes["finite"] == (None, 0.9)
    for name in ("nan", "inf"):
        assert outcomes[name][0] == 1 and math.isnan(outcomes[name][1])
    # an interrupted try's diverged epochs are reported as NaN again when it resumes
    trial = study.ask(dist)
    make_pruning_reporter(trial, "val_accuracy", {"loss": [math.nan], "val_accuracy": [0.9]})
    assert math.isnan(study.trials[trial.number].intermediate_values[1])
    assert trial.should_prune()


def test_interrupted_trials_are_retried_with_their_params_and_not_counted_twice(tmp_path):
    space = parse_space(
        {"preset": "smoke", "params": {"learning_rate": {"low": 1e-4, "high": 1e-2}}, "enqueue": [{}]}, "test"
    )
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(space, "s", storage, create=True)
    first, second = study.ask(), study.ask()
    assert suggest(first, space) == baseline_params(space)[0] == {"learning_rate": 1e-3}  # the queued preset first
    lr = suggest(second, space)["learning_rate"]
    second.set_user_attr("work_dir", "trial-001")
    study.tell(first, 0.5)
    # the sweep was killed with `second` running: the next run fails it and queues it again
    again = open_study(space, "s", storage, create=True)
    assert retry_interrupted(again) == [second.number]
    assert len(counted_trials(again)) == 1
    retry = again.ask()
    assert suggest(retry, space)["learning_rate"] == lr and retry.user_attrs["work_dir"] == "trial-001"
    assert original_number(again.trials[retry.number]) == second.number
    again.tell(retry, 0.6)
    assert [t.number for t in counted_trials(again)] == [first.number, retry.number]
    states = [t.state for t in again.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    with pytest.raises(SpaceError, match="another search space"):
        open_study(load_space(), "s", storage, create=True)


def test_a_trial_run_created_just_before_a_kill_is_adopted_with_its_params(tmp_path):
    """A kill between creating a trial's MLflow run and writing its folder's marker left a run
    with the folder tag and no params: the retry goes on in that run and logs them there."""
    import mlflow
    import numpy as np

    from emotion_core.dataset import PackedFaces
    from emotion_core.train import TrainConfig
    from flows.sweep import _adopt_child_run
    from flows.train import start_or_resume_run

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("sweep")
        work, other = tmp_path / "trial-003-abc", tmp_path / "trial-004-def"
        assert _adopt_child_run(experiment, work) is None  # no run yet: a new one is made
        orphan = client.create_run(experiment, tags={"sweep.work_dir": str(work)}).info.run_id
        client.create_run(experiment, tags={"sweep.work_dir": str(other)})
        assert _adopt_child_run(experiment, work) == orphan  # found by its own folder, not another's
        packed = PackedFaces(
            np.zeros((2, 48, 48), np.uint8), np.array([0, 1]), np.array(["train"] * 2), ("a", "b"), "k"
        )
        config = TrainConfig(epochs=3, learning_rate=2e-3)
        run_id = start_or_resume_run(
            work,
            experiment,
            config,
            packed,
            preset="smoke",
            extra_params={"trial.learning_rate": 2e-3},
            adopted_run_id=_adopt_child_run(experiment, work),
        )
        assert run_id == orphan and (work / "mlflow_run_id").read_text() == orphan
        params = client.get_run(orphan).data.params
        assert params["trial.learning_rate"] == "0.002" and params["epochs"] == "3" and params["preset"] == "smoke"
        assert _adopt_child_run(experiment, work) is None  # the marker now names it
        assert start_or_resume_run(work, experiment, config, packed, preset="smoke") == orphan
        assert len(client.search_runs([experiment])) == 2  # nothing created on the way
    finally:
        mlflow.set_tracking_uri(previous)


# --- real sweeps -------------------------------------------------------------------------------------


def sweep_env() -> dict[str, str]:
    """The user's environment: no Prefect or MLflow server configured (the data dir's own stores)."""
    return {k: v for k, v in clean_env().items() if not k.startswith("MLFLOW_")}


def sweep_cmd(data: Path, space: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "flows", "sweep", "-d", str(data), "--trials", "4", "--space", str(space), *extra]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=sweep_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


@contextmanager
def read_only_mlflow(data: Path):
    """A client of the data dir's embedded MLflow store (not the registry another test configured)."""
    import mlflow

    uri = f"sqlite:///{data.resolve() / 'mlflow' / 'mlflow.db'}"
    yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def the_study(data: Path) -> optuna.Study:
    storage = f"sqlite:///{data / 'sweeps' / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage)


def finished_models(data: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (data / "sweeps").glob("*/trial-*/final.keras")}


@pytest.fixture(scope="module")
def split_sample(datasets, tmp_path_factory) -> Path:
    """360 faces of three FER2013 classes, through compress, crop and split."""
    base = tmp_path_factory.mktemp("sweep")
    for label in ("happy", "surprise", "sad"):
        (base / "input" / label).mkdir(parents=True)
        for path in sorted((datasets / "fer2013" / "train" / label).glob("*.jpg"))[:120]:
            (base / "input" / label / path.name).symlink_to(path)
    run(split_cmd(base / "input", base / "split"))
    return base / "split"


def study_states(data: Path) -> list[str]:
    """The trial states in the study database, read without Optuna (the sweep is writing it)."""
    db = data / "sweeps" / "optuna.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.Error:
        return []


def kill_mid_sweep(cmd: list[str], data: Path, log: Path) -> None:
    """Start the sweep and kill -9 it once a trial has completed while another one is mid-training
    (an epoch checkpoint written, no final model yet)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=sweep_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300

    def mid_training() -> bool:
        states = study_states(data)
        if "COMPLETE" not in states or "RUNNING" not in states:
            return False
        trials = (data / "sweeps").glob("*/trial-*")
        return any((t / "checkpoint" / "state.json").is_file() and not (t / "final.keras").is_file() for t in trials)

    while proc.poll() is None and not mid_training() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before the kill:\n{log.read_text()[-3000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sweep_on_dask_killed_resumes_prunes_registers_the_best_and_a_rerun_trains_nothing(split_sample, tmp_path):
    data = tmp_path / "data"
    subprocess.run(["cp", "-a", str(split_sample), str(data)], check=True)
    cmd = sweep_cmd(data, write_space(tmp_path), "--task-runner", "dask", "--workers", "2")
    kill_mid_sweep(cmd, data, tmp_path / "killed.log")
    assert "RUNNING" in study_states(data), "the kill should have left a trial running"

    out = run(cmd).stdout
    assert "retried interrupted trials" in out and "best trial" in out
    study = the_study(data)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # N in all
    assert len({t.user_attrs["work_dir"] for t in finished}) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 4  # none duplicated
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    retries = [original_number(t) for t in finished if original_number(t) != t.number]
    assert failed and sorted(retries) == sorted(failed)  # each interrupted try retried once
    # every trial reported its epochs to the pruner; the wrecked recipe was pruned at its first epoch
    # (its second, if the kill fell between its first checkpoint and the prune)
    assert all(t.intermediate_values for t in finished)
    (wrecked,) = [t for t in finished if t.params["learning_rate"] == 1.0e30]
    assert wrecked.state == TrialState.PRUNED and wrecked.last_step < 3
    completed = [t for t in finished if t.state == TrialState.COMPLETE]
    first = wrecked.intermediate_values[1]
    assert math.isnan(first) or first > 100 * max(t.intermediate_values[1] for t in completed)
    assert all(t.last_step < 3 for t in finished if t.state == TrialState.PRUNED)
    assert TrialState.COMPLETE in [t.state for t in finished]

    with read_only_mlflow(data) as client:
        runs = client.search_runs([client.get_experiment_by_name("emotion-pipeline").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 4 and len(runs) == 5  # a retried trial goes on in its first try's run
        outcomes = [(r.data.tags["sweep.outcome"], r.info.status) for r in children]
        assert ("completed", "FINISHED") in outcomes
        assert all(o in (("pruned", "KILLED"), ("completed", "FINISHED")) for o in outcomes)
        for child in children:  # per-epoch metrics, one per epoch however often it was resumed
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy")]
            assert 1 <= len(steps) <= 3 and "trial.learning_rate" in child.data.params
        artefacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
        assert {"sweep/space.yaml", "sweep/trials.csv", "sweep/optimization_history.png"} <= artefacts
        best = study.best_trial
        assert parent.data.tags["sweep.best_trial"] == str(best.number)
        champion = client.get_model_version_by_alias("emotion-classifier", "champion")
        assert champion.run_id == best.user_attrs["mlflow_run_id"]  # the best trial's model, registered
        assert len(client.search_model_versions("name='emotion-classifier'")) == 1  # only the best

    models = finished_models(data)
    assert len(models) == 4
    again = run(cmd).stdout
    assert "ran 0 trials" in again
    assert finished_models(data) == models  # nothing retrained
    assert len(the_study(data).trials) == len(study.trials)
