"""Load a registered model and its label set, through a per-version local cache.

Models are loaded with Keras's safe mode (no arbitrary code, no pickle flavour). A model fetched
once is cached under ``<cache>/<name>/v<version>``; with the tracking server down, the last
version seen for an alias is loaded from the cache and the caller is told so.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class ModelLoadError(RuntimeError):
    """A model that cannot be found, fetched or trusted."""


class ModelNotRegistered(ModelLoadError):
    """The registry answered, and has no model under that name and alias."""


@dataclass
class LoadedModel:
    model: object  # keras.Model
    labels: tuple[str, ...]
    input_size: int
    name: str
    version: str
    from_cache: bool
    path: Path
    train_sharpness: float | None = None  # median Laplacian variance of the training faces, if logged


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of ``models:/name@alias`` or ``models:/name/3``."""
    match = _URI.match(uri)
    if not match:
        raise ModelLoadError(f"model URI {uri!r} is not of the form models:/NAME@ALIAS or models:/NAME/VERSION")
    return match["name"], match["alias"], match["version"]


def _resolve_version(name: str, alias: str | None, version: str | None, cache: Path, offline: bool) -> tuple[str, bool]:
    """The version to load, and whether it came from the offline alias memory."""
    import mlflow
    from mlflow.exceptions import MlflowException

    memory = cache / name / "aliases.json"
    if version:
        return version, offline
    if offline:
        return _remembered(memory, name, alias, RuntimeError("the tracking server is unreachable")), True
    try:
        resolved = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise ModelNotRegistered(f"no registered model {name!r} with alias {alias!r}") from None
        return _remembered(memory, name, alias, exc), True
    except Exception as exc:  # connection refused, DNS, timeouts: the server is down
        return _remembered(memory, name, alias, exc), True
    known = json.loads(memory.read_text()) if memory.is_file() else {}
    known[alias] = str(resolved)
    memory.parent.mkdir(parents=True, exist_ok=True)
    memory.write_text(json.dumps(known))
    return str(resolved), False


def _remembered(memory: Path, name: str, alias: str, exc: Exception) -> str:
    known = json.loads(memory.read_text()) if memory.is_file() else {}
    if alias in known:
        return known[alias]
    raise ModelLoadError(f"cannot resolve models:/{name}@{alias} and nothing is cached: {str(exc).splitlines()[0]}")


def _model_file(folder: Path) -> Path:
    files = sorted(folder.rglob("*.keras"))
    if not files:
        raise ModelLoadError(f"no Keras .keras file in the model artefact at {folder}; wrong format or tampered")
    return files[0]


def _metadata(folder: Path) -> dict:
    mlmodel = next(iter(sorted(folder.rglob("MLmodel"))), None)
    if mlmodel is None:
        raise ModelLoadError(f"no MLmodel file in {folder}; not an MLflow model")
    meta = (yaml.safe_load(mlmodel.read_text()) or {}).get("metadata") or {}
    if not meta.get("labels"):
        raise ModelLoadError("the model carries no label set in its MLflow metadata; it was not logged by this project")
    return meta


def load_model(uri: str, cache_dir: str | Path, offline: bool = False) -> LoadedModel:
    """Load ``models:/...`` (registry) or a local MLflow model folder, with its labels.

    With ``offline`` (the tracking server is known to be down) only the local cache is used.
    """
    import keras

    cache = Path(cache_dir)
    if Path(uri).is_dir():
        folder, name, version, from_cache = Path(uri), Path(uri).name, "local", False
    else:
        name, alias, version = parse_model_uri(uri)
        version, from_cache = _resolve_version(name, alias, version, cache, offline)
        folder = cache / name / f"v{version}"
        if not folder.is_dir():
            if from_cache:
                raise ModelLoadError(f"the tracking server is unreachable and version {version} is not cached")
            _download(name, version, folder)
    meta = _metadata(folder)
    try:
        model = keras.saving.load_model(_model_file(folder), compile=False, safe_mode=True)
    except Exception as exc:  # keras raises many kinds for a bad archive
        raise ModelLoadError(f"refusing to load the model at {folder}: {str(exc).splitlines()[0]}") from None
    labels = tuple(meta["labels"])
    shape = model.input_shape
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 1:
        raise ModelLoadError(f"model input shape {shape} is not (None, S, S, 1) grayscale faces")
    if model.output_shape[-1] != len(labels):
        raise ModelLoadError(f"model has {model.output_shape[-1]} outputs but {len(labels)} labels")
    sharp = meta.get("train_sharpness_median")
    return LoadedModel(
        model, labels, int(shape[1]), name, str(version), from_cache, folder, float(sharp) if sharp else None
    )


#: What ``emotion realtime`` labels with when no model is named: a model trained here, else the
#: shipped FER2013 model (``emotion model install-pretrained``).
DEFAULT_MODEL_URIS = ("models:/emotion-classifier@champion", "models:/emotion-fer2013@champion")


def load_first(uris: tuple[str, ...], cache_dir: str | Path, offline: bool = False) -> LoadedModel:
    """The first of ``uris`` that is registered (or, offline, cached); else the first one's error."""
    first: ModelLoadError | None = None
    for uri in uris:
        try:
            return load_model(uri, cache_dir, offline=offline)
        except ModelLoadError as exc:
            if not (isinstance(exc, ModelNotRegistered) or offline):
                raise
            first = first or exc
    raise first or ModelLoadError("no model URI given")


def _download(name: str, version: str, folder: Path) -> None:
    import mlflow

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}-", dir=folder.parent))
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        tmp.replace(folder)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(f"cannot download models:/{name}/{version}: {str(exc).splitlines()[0]}") from None
