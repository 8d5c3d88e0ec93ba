"""The FER2013 emotion model shipped with the package, and registering it into any MLflow registry.

The model folder ``fer2013/`` next to this file is an MLflow model this project's own recipe
trained and logged (Keras flavour plus the image-in ``python_function`` flavour of
:mod:`modelstore.serving`); ``fer2013/provenance.json`` says what it is and how to reproduce it.
:func:`install` registers it under its own name, so its label set never competes with a model
trained on other data; :func:`export` replaces it with a registered version (the maintainer's
retrain-and-replace step). Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

SHIPPED_DIR = Path(__file__).parent / "fer2013"
PROVENANCE_FILE = "provenance.json"
REGISTERED_NAME = "emotion-fer2013"
ALIASES = ("champion", "pretrained")
EXPERIMENT = "emotion-pretrained"
SHA_TAG = "shipped_sha256"
MAX_BYTES = 5_000_000
FER2013_TERMS = (
    "FER2013 (Goodfellow et al., 2013, ICML 2013 Challenges in Representation Learning) is research data: "
    "its faces were collected from the web without the subjects' consent for this use. Use this model for "
    "research and evaluation; check the dataset's terms before any commercial or deployed use."
)


class PretrainedError(RuntimeError):
    """The shipped model is missing, altered or cannot be installed."""


@dataclass
class Installed:
    name: str
    version: str
    aliases: tuple[str, ...]
    created: bool  # False: this exact model was already registered (nothing added)
    provenance: dict


def model_file(folder: Path = SHIPPED_DIR) -> Path:
    """The Keras file of the shipped model folder."""
    files = sorted(folder.glob("data/*.keras"))
    if not files or not (folder / "MLmodel").is_file():
        raise PretrainedError(f"no shipped model at {folder} (MLmodel and data/*.keras expected)")
    return files[0]


def fingerprint(folder: Path = SHIPPED_DIR) -> str:
    """SHA-256 of the shipped Keras file: the identity that makes :func:`install` idempotent."""
    return hashlib.sha256(model_file(folder).read_bytes()).hexdigest()


def provenance(folder: Path = SHIPPED_DIR) -> dict:
    """What the shipped model is: labels, training run, data hash, scores, commit, command, terms."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        raise PretrainedError(f"the shipped model has no {PROVENANCE_FILE} at {folder}")
    return json.loads(path.read_text())


def install(artifact_root: Path | None = None, folder: Path = SHIPPED_DIR) -> Installed:
    """Register the shipped model into the configured MLflow registry (once).

    A run in the ``emotion-pretrained`` experiment carries the training run's parameters and
    metrics and the model as artefacts; the registered version under ``emotion-fer2013`` gets a
    description, tags and the ``champion`` and ``pretrained`` aliases. A second call finds the
    version by the model file's hash and adds nothing.
    """
    import mlflow

    from ..runs import describe_version, version_summary
    from ..tracking import ensure_experiment

    digest, info = fingerprint(folder), provenance(folder)
    if info.get("sha256") != digest:
        raise PretrainedError("the shipped model file does not match the hash in its provenance; reinstall the package")
    client = mlflow.MlflowClient()
    for found in client.search_model_versions(f"name='{REGISTERED_NAME}'"):
        if found.tags.get(SHA_TAG) == digest:
            _set_aliases(client, found.version)
            return Installed(REGISTERED_NAME, str(found.version), ALIASES, False, info)
    experiment = ensure_experiment(EXPERIMENT, artifact_root)
    training = info.get("training", {})
    with mlflow.start_run(experiment_id=experiment, run_name="shipped-fer2013") as run:
        mlflow.log_params({k: v for k, v in training.get("params", {}).items() if not k.startswith("version.")})
        mlflow.log_metrics({k: float(v) for k, v in info.get("metrics", {}).items()})
        mlflow.set_tags(
            {
                "shipped": "true",
                SHA_TAG: digest,
                "source_run_id": training.get("run_id", ""),
                "commit": info.get("commit", ""),
                "reproduce": info.get("command", ""),
            }
        )
        mlflow.log_dict(info, "provenance.json")
        mlflow.log_artifacts(str(folder), artifact_path="model")
    version = str(mlflow.register_model(f"runs:/{run.info.run_id}/model", REGISTERED_NAME).version)
    metrics = {k: v for k, v in info.get("metrics", {}).items() if k.startswith("public_test")}
    description, tags = version_summary(
        tuple(info["labels"]),
        metrics,
        {"manifest_hash": info.get("data", {}).get("manifest_hash", ""), **info.get("data", {}).get("sizes", {})},
        f"shipped with emotion-pipeline: {info.get('recipe', 'FER2013 model')}; FER2013 is research data",
    )
    describe_version(REGISTERED_NAME, version, description, {**tags, "shipped": "true", SHA_TAG: digest})
    _set_aliases(client, version)
    return Installed(REGISTERED_NAME, version, ALIASES, True, info)


def _set_aliases(client, version: str) -> None:
    for alias in ALIASES:
        client.set_registered_model_alias(REGISTERED_NAME, alias, str(version))


def export(model_folder: Path, info: dict, out: Path = SHIPPED_DIR, max_bytes: int = MAX_BYTES) -> dict:
    """Replace the shipped model with the MLflow model folder ``model_folder`` and its provenance.

    ``info`` is the provenance without the hash (added here). Refuses a model over ``max_bytes``.
    The new folder is written beside the old one and swapped in, so a failure keeps the old model.
    """
    size = sum(p.stat().st_size for p in model_folder.rglob("*") if p.is_file())
    if size > max_bytes:
        raise PretrainedError(
            f"the model folder is {size:,} bytes, over the {max_bytes:,} bytes a shipped model may use"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fer2013-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the shipped folder is package data
    try:
        for item in ("MLmodel", "data", "conda.yaml", "python_env.yaml", "requirements.txt"):
            src = model_folder / item
            if src.is_dir():
                shutil.copytree(src, staging / item)
            elif src.is_file():
                shutil.copy2(src, staging / item)
        for example in ("input_example.json", "serving_input_example.json"):
            if (model_folder / example).is_file():
                shutil.copy2(model_folder / example, staging / example)
        full = {**info, "sha256": fingerprint(staging), "terms": FER2013_TERMS}
        (staging / PROVENANCE_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
        old = out.with_name(out.name + ".old")
        if out.exists():
            out.replace(old)
        staging.replace(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return provenance(out)


def export_registered(
    uri: str,
    cache_dir: Path,
    public_test: Path,
    reproduce: str,
    repo: Path,
    exclude: set[str] | None = None,
    out: Path = SHIPPED_DIR,
) -> dict:
    """Make a registered version the shipped model: re-save it in the current model format, score
    it on ``public_test`` (all faces, and without the files named in ``exclude``, e.g. FER2013's
    train duplicates) exactly as ``emotion evaluate`` does, and write it with its provenance."""
    import mlflow
    import numpy as np

    from emotion_core.evaluate import compute_metrics, load_labelled_faces, predict_probs

    from ..loading import load_model
    from ..runs import current_commit, save_model_folder

    loaded = load_model(uri, cache_dir)
    version = mlflow.MlflowClient().get_model_version(loaded.name, loaded.version)
    run = mlflow.MlflowClient().get_run(version.run_id)
    faces = load_labelled_faces(public_test, loaded.labels, size=loaded.input_size)
    probs = predict_probs(loaded.model, faces.x)
    scores = compute_metrics(faces.y, probs.argmax(1), loaded.labels)
    metrics = {"public_test_accuracy": scores.accuracy, "public_test_macro_f1": scores.macro_f1}
    if exclude:
        keep = np.array([path not in exclude for path in faces.paths])
        dedup = compute_metrics(faces.y[keep], probs[keep].argmax(1), loaded.labels)
        metrics |= {"public_test_dedup_accuracy": dedup.accuracy, "public_test_dedup_macro_f1": dedup.macro_f1}
    metrics |= {k: v for k, v in run.data.metrics.items() if k.startswith(("test_", "val_")) and "recall" not in k}
    params = run.data.params
    info = {
        "name": "FER2013 emotion model",
        "labels": list(loaded.labels),
        "input_size": loaded.input_size,
        "preprocessing": "grayscale face crop -> preprocess_face (INTER_AREA/LINEAR resize to input_size), "
        "0-255 float32 in, scaled to [0, 1] inside the model",
        "recipe": f"{params.get('preset', 'cpu')} preset: {params.get('model')}, {params.get('epochs')} epochs, "
        f"batch {params.get('batch_size')}, label smoothing {params.get('label_smoothing')}, "
        f"training crops {params.get('crop') or 'none'}, precision {params.get('precision', 'float32')}",
        "training": {
            "run_id": run.info.run_id,
            "registered": f"{loaded.name}/{loaded.version}",
            "params": params,
            "train_commit": run.data.tags.get("mlflow.source.git.commit", "not recorded"),
        },
        "data": {
            "dataset": "FER2013 train (28,709 faces), ../shared/datasets/fer2013/train",
            "manifest_hash": params.get("manifest_hash", ""),
            "sizes": {k: int(v) for k, v in params.items() if k in ("n_train", "n_val", "n_test")},
            "evaluated_on": f"{public_test} ({len(faces.y)} faces)",
        },
        "metrics": metrics,
        "commit": current_commit(repo),
        "command": reproduce,
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        extra = {"train_sharpness_median": loaded.train_sharpness} if loaded.train_sharpness else None
        save_model_folder(loaded.model, loaded.labels, loaded.input_size, folder, faces.x[0], extra)
        return export(folder, info, out)
