"""Tracking-server setup: embedded SQLite by default, any MLflow server by URI."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

# MLflow draws tqdm progress bars when downloading a model wherever tqdm is installed (Optuna
# brings it); on a command line that prints one-line errors or JSON they are noise. The user's
# setting wins.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402

from emotion_core.servers import running_url  # noqa: E402

DEFAULT_EXPERIMENT = "emotion-pipeline"
# The user's setting as the process started: mlflow.set_tracking_uri() overwrites the environment
# variable, so reading it later would return whichever store was configured last.
_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached."""


def default_tracking_uri(data_dir: str | Path, explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI`` (as set by the user), else the MLflow server that
    ``emotion server start`` runs for ``data_dir``, else SQLite under ``data_dir/mlflow``."""
    if explicit:
        return explicit
    if _USER_TRACKING_URI:
        return _USER_TRACKING_URI
    served = running_url(data_dir, "mlflow")
    if served:
        return served
    return f"sqlite:///{Path(data_dir).resolve() / 'mlflow' / 'mlflow.db'}"


def configure(tracking_uri: str) -> str:
    """Point MLflow (tracking and registry) at ``tracking_uri``; check an HTTP server answers."""
    if tracking_uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5) as reply:
                if reply.status != 200:
                    raise TrackingUnavailable(f"MLflow server at {tracking_uri} answered HTTP {reply.status}")
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"cannot reach the MLflow tracking server at {tracking_uri}: {reason}") from None
    elif tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return tracking_uri


def ensure_experiment(name: str = DEFAULT_EXPERIMENT, artifact_root: Path | None = None) -> str:
    """The id of experiment ``name``, created with artifacts under ``artifact_root`` (local stores)."""
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(_KIND_TAG) != _KIND:
            client.set_experiment_tag(found.experiment_id, _KIND_TAG, _KIND)
        return found.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    return client.create_experiment(name, artifact_location=location, tags={_KIND_TAG: _KIND})


# The MLflow 3 UI shows model-training views (not GenAI ones) for experiments of this kind.
_KIND_TAG, _KIND = "mlflow.experimentKind", "custom_model_development"
