"""Logging a training run and registering its model with champion/challenger aliases."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np

CHAMPION, CHALLENGER = "champion", "challenger"
DEFAULT_MODEL_NAME = "emotion-classifier"
_PACKAGES = ("tensorflow", "tensorflow-cpu", "keras", "numpy", "opencv-python", "mlflow", "prefect", "pandas")


class EpochLogger(keras.callbacks.Callback):
    """Logs every epoch's metrics (and the learning rate) to the active MLflow run."""

    def __init__(self, first_epoch: int = 0):
        super().__init__()
        self.first_epoch = first_epoch

    def on_epoch_end(self, epoch, logs=None):
        metrics = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v) or np.ndim(v) == 0}
        try:
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):
            pass
        mlflow.log_metrics(metrics, step=epoch + 1)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a model depends on, as MLflow params."""
    out = {}
    for name in _PACKAGES:
        try:
            out[f"version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    score: float
    champion_score: float | None
    reason: str


def log_model(
    model,
    labels: tuple[str, ...],
    input_size: int,
    x_example: np.ndarray,
    registered_name: str,
    extra_metadata: dict | None = None,
) -> str:
    """Log the model in Keras's native format with signature, input example and label set (plus
    ``extra_metadata``, e.g. the training faces' sharpness); register it.

    Returns the new registered version. The model is saved into a folder made beforehand and
    logged as the run's ``model`` artefacts: MLflow 3.17's ``mlflow.keras.log_model`` writes the
    input example before creating its folder and fails.
    """
    import tempfile

    from mlflow.models import infer_signature

    example = x_example[:2].astype(np.float32)
    signature = infer_signature(example, np.asarray(model(example, training=False)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        mlflow.keras.save_model(
            model,
            str(folder),
            signature=signature,
            input_example=example,
            metadata={
                "labels": list(labels),
                "input_size": input_size,
                "input": "gray face, 0-255, float32",
                **(extra_metadata or {}),
            },
        )
        mlflow.log_artifacts(str(folder), artifact_path="model")
    run_id = mlflow.active_run().info.run_id
    version = mlflow.register_model(f"runs:/{run_id}/model", registered_name)
    return str(version.version)


def promote(
    name: str, version: str, score: float, labels: tuple[str, ...], champion_score: Callable[[str], float | None]
) -> Registration:
    """Give ``version`` the champion alias if it beats the champion on the same data, else challenger.

    ``champion_score(uri)`` evaluates the current champion on the same test data (None when it
    cannot: a different label set). A model whose score cannot be compared never replaces one.
    """
    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Registration(name, version, CHAMPION, score, None, "first registered model")
    if str(current.version) == str(version):
        return Registration(name, version, CHAMPION, score, score, "already champion")
    previous = champion_score(f"models:/{name}/{current.version}")
    if previous is not None and score > previous:
        client.set_registered_model_alias(name, CHAMPION, version)
        reason = f"beats champion v{current.version} ({score:.4f} > {previous:.4f})"
        alias = CHAMPION
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
        alias = CHALLENGER
        reason = (
            f"does not beat champion v{current.version} ({score:.4f} <= {previous:.4f})"
            if previous is not None
            else f"champion v{current.version} has another label set; not compared"
        )
    client.set_model_version_tag(name, version, "promotion", reason)
    return Registration(name, version, alias, score, previous, reason)


def log_report_files(folder: Path) -> None:
    """Log every file of ``folder`` as run artefacts under ``report/``."""
    mlflow.log_artifacts(str(folder), artifact_path="report")
