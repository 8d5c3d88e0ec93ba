"""The sweep's trial task: one training of the train stage, reporting each epoch to Optuna."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from emotion_core.sweep_space import SearchSpace
from emotion_core.train import FINAL_NAME, TrainConfig


def limit_threads(threads: int | None) -> None:
    """Give this worker process ``threads`` CPU threads for TensorFlow and OpenCV (None: their defaults).

    Set before TensorFlow starts in the process (a pool process that already ran a trial keeps the
    same setting), so two trials on a 2-core machine take a core each instead of contending for both.
    """
    if not threads:
        return
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process (by an earlier trial): kept
        pass


@task(name="trial", task_run_name="trial {number}", cache_policy=NO_CACHE)
def train_trial(
    number: int,
    config: TrainConfig,
    work_dir: str,
    data_dir: str,
    manifest: str,
    storage: str,
    study_name: str,
    space: SearchSpace,
    run_id: str,
    tracking_uri: str,
    threads: int | None,
) -> dict:
    """Train trial ``number``'s config in ``work_dir`` (resuming its last finished epoch), log every
    epoch to its MLflow run and report it to Optuna; stop when the pruner says so.

    Returns ``state`` (``completed`` or ``pruned``), the objective ``value`` of the kept epoch,
    the epochs run and the minutes this try trained.
    """
    limit_threads(threads)
    import mlflow

    import modelstore
    from emotion_core.dataset import pack_faces
    from emotion_core.manifest import read_manifest
    from emotion_core.study import make_pruning_reporter, open_study, trial_by_id
    from emotion_core.train import read_history, train
    from modelstore.runs import EpochLogger

    started = time.monotonic()
    modelstore.configure(tracking_uri)
    study = open_study(space, study_name, storage, create=False)
    trial = trial_by_id(study, number)
    df, info = read_manifest(manifest)
    packed = pack_faces(df, info.labels, data_dir, config.input_size)
    work = Path(work_dir)
    finished_before = (work / FINAL_NAME).is_file()
    reporter = make_pruning_reporter(trial, space.objective, read_history(work / "history.csv"))
    with mlflow.start_run(run_id=run_id):
        outcome = train(packed, config, work, callbacks=[EpochLogger(), reporter])
    history = outcome.history
    epochs_run = len(history.get("loss", []))
    pruned = reporter.pruned_at is not None or (finished_before and epochs_run < config.epochs and not config.patience)
    values = history.get(space.objective) or [float("nan")]
    return {
        "number": number,
        "state": "pruned" if pruned else "completed",
        "value": float(values[outcome.kept_epoch - 1] if len(values) >= outcome.kept_epoch else values[-1]),
        "epochs_run": epochs_run,
        "kept_epoch": outcome.kept_epoch,
        "train_minutes": (time.monotonic() - started) / 60,
        "reused": finished_before,
    }
