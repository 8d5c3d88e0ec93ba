"""Logging a training run and registering its model with champion/challenger aliases."""

from __future__ import annotations

import importlib.metadata
import subprocess
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


def save_model_folder(
    model,
    labels: tuple[str, ...],
    input_size: int,
    folder: Path,
    example_face: np.ndarray,
    extra_metadata: dict | None = None,
) -> None:
    """Write an MLflow model folder: the Keras flavour (native ``.keras``, without optimizer state),
    the image-in, emotion-out ``python_function`` flavour of :mod:`modelstore.serving`, its
    signature and a one-face input example, and the label set in the metadata."""
    from mlflow.models import Model
    from mlflow.models.utils import _save_example

    from . import serving

    inference = keras.models.clone_model(model)  # the weights without the optimizer's state
    inference.set_weights(model.get_weights())
    mlflow.keras.save_model(
        inference,
        str(folder),
        signature=infer_signature_of_tensors(inference, input_size),
        metadata={
            "labels": list(labels),
            "input_size": input_size,
            "input": "gray face, 0-255, float32 (keras flavour); images (python_function flavour)",
            **(extra_metadata or {}),
        },
    )
    mlmodel = Model.load(str(folder / "MLmodel"))
    pyfunc = mlmodel.flavors.pop("python_function")
    mlflow.pyfunc.add_to_model(
        mlmodel,
        loader_module="modelstore.serving",
        data=mlmodel.flavors["keras"]["data"],
        conda_env=pyfunc["env"]["conda"],
        python_env=pyfunc["env"]["virtualenv"],
    )
    mlmodel.signature = serving.signature()
    for stale in ("input_example.json", "serving_input_example.json"):
        (folder / stale).unlink(missing_ok=True)
    _save_example(mlmodel, serving.input_example(example_face), str(folder))
    mlmodel.save(str(folder / "MLmodel"))


def infer_signature_of_tensors(model, input_size: int):
    """The Keras flavour's own tensor signature (faces in, probabilities out)."""
    from mlflow.models import infer_signature

    example = np.zeros((1, input_size, input_size, 1), np.float32)
    return infer_signature(example, np.asarray(model(example, training=False)))


def log_model(
    model,
    labels: tuple[str, ...],
    input_size: int,
    example_face: np.ndarray,
    registered_name: str,
    extra_metadata: dict | None = None,
) -> str:
    """Log the model (see :func:`save_model_folder`) as the active run's ``model`` artefacts and
    register it; returns the new registered version.

    The folder is written beforehand and logged as artefacts: MLflow 3.17's
    ``mlflow.keras.log_model`` writes the input example before creating its folder and fails.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        save_model_folder(model, labels, input_size, folder, example_face, extra_metadata)
        mlflow.log_artifacts(str(folder), artifact_path="model")
    run_id = mlflow.active_run().info.run_id
    version = mlflow.register_model(f"runs:/{run_id}/model", registered_name)
    return str(version.version)


def describe_version(name: str, version: str, description: str, tags: dict[str, object]) -> None:
    """Give a registered version a description and tags, so the registry page says what it is."""
    client = mlflow.MlflowClient()
    client.update_model_version(name, version, description=description)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def version_summary(
    labels: tuple[str, ...], metrics: dict[str, float], data: dict[str, object], recipe: str
) -> tuple[str, dict[str, object]]:
    """The description and tags of a registered version: label set, data, scores and recipe."""
    scores = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
    sizes = ", ".join(f"{k} {v}" for k, v in data.items() if k.startswith("n_"))
    description = f"{recipe}. Labels: {', '.join(labels)}. {scores}. Data: {sizes}."
    tags = {"labels": ",".join(labels), **{k: f"{v:.4f}" for k, v in metrics.items()}, **data, "recipe": recipe}
    return description, tags


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


def current_commit(repo: Path) -> str:
    """The checked-out commit of ``repo`` (with ``-dirty`` when it has uncommitted changes)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")
