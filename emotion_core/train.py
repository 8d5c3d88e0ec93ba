"""Model training over packed faces: class weights, early stopping, best-epoch weights and
epoch checkpoints, so an interrupted training resumes from its last finished epoch."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .dataset import PackedFaces, class_weights, make_tf_dataset
from .models import DEFAULT_MODEL, architecture_fingerprint, build_model, model_spec

FINAL_NAME = "final.keras"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training. ``learning_rate`` None takes the model's default."""

    model: str = DEFAULT_MODEL
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float | None = None
    patience: int = 8
    input_size: int = 48
    class_weighting: bool = True
    seed: int = 1337

    def resolved(self) -> TrainConfig:
        spec = model_spec(self.model)
        return self if self.learning_rate else replace(self, learning_rate=spec.learning_rate)

    def key(self, data_key: str) -> str:
        payload = json.dumps([asdict(self.resolved()), data_key, architecture_fingerprint(self.model)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


#: Named presets. Measured on 2 cores: one FER2013 epoch of the default model costs ~290 s, so
#: ``cpu`` (30 epochs, early stopping) takes up to ~2.4 h there.
PRESETS: dict[str, TrainConfig] = {
    "cpu": TrainConfig(epochs=30, batch_size=64, patience=8),
    "gpu": TrainConfig(epochs=100, batch_size=128, patience=15),
    "seed": TrainConfig(model="seed_cnn", epochs=15, batch_size=64, patience=15),
    "demo": TrainConfig(epochs=20, batch_size=32, patience=10),
    "smoke": TrainConfig(epochs=1, batch_size=32),
}


@dataclass
class TrainOutcome:
    model: object  # keras.Model with the best epoch's weights
    history: dict[str, list[float]]
    best_epoch: int  # 1-based
    resumed_from_epoch: int  # 0 when the training started fresh
    work_dir: Path


class EmptyTrainingData(ValueError):
    """No training rows, or a label set that cannot be learned."""


def check_trainable(packed: PackedFaces) -> None:
    """Refuse data that cannot train a classifier, with a one-line reason."""
    counts = packed.counts()
    if counts["train"] == 0:
        raise EmptyTrainingData("the manifest has no usable training rows (run the split stage, check statuses)")
    present = np.unique(packed.part("train")[1])
    if len(packed.labels) < 2 or len(present) < 2:
        raise EmptyTrainingData(f"need at least two classes with training faces, found {len(present)}")


def _read_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    history: dict[str, list[float]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key != "epoch" and value not in (None, ""):
                    history.setdefault(key, []).append(float(value))
    return history


def train(
    packed: PackedFaces, config: TrainConfig, work_dir: str | Path, callbacks: list | None = None
) -> TrainOutcome:
    """Train ``config.model`` on the packed train split, validating on the val split.

    Work files live in ``work_dir``: an epoch backup (``keras.callbacks.BackupAndRestore``) so a
    killed run resumes where it stopped, the per-epoch history, the best epoch's weights, and the
    final model, whose presence makes a rerun skip training altogether.
    """
    import keras

    check_trainable(packed)
    config = config.resolved()
    spec = model_spec(config.model)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    history_csv, best_weights, final = work / "history.csv", work / "best.weights.h5", work / FINAL_NAME
    if final.is_file():
        history = _read_history(history_csv)
        model = keras.saving.load_model(final, compile=False, safe_mode=True)
        return TrainOutcome(model, history, _best_epoch(history), len(history.get("loss", [])), work)

    keras.mixed_precision.set_global_policy("float32")  # inference runs in float32; so does training
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = packed.part("train")
    x_val, y_val = packed.part("val")
    has_val = len(x_val) > 0
    monitor = "val_accuracy" if has_val else "accuracy"
    previous = _read_history(history_csv)
    model = build_model(config.model, config.input_size, len(packed.labels))
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    cbs = [
        keras.callbacks.BackupAndRestore(str(work / "backup")),
        keras.callbacks.CSVLogger(str(history_csv), append=True),
        keras.callbacks.ModelCheckpoint(
            str(best_weights),
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=max(previous[monitor]) if previous.get(monitor) else None,
        ),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=config.patience),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss" if has_val else "loss", factor=spec.lr_factor, patience=spec.lr_patience
        ),
        *(callbacks or []),
    ]
    weights = class_weights(y_train, len(packed.labels)) if config.class_weighting else None
    model.fit(
        make_tf_dataset(x_train, y_train, config.batch_size, training=True, seed=config.seed),
        validation_data=make_tf_dataset(x_val, y_val, 256, training=False) if has_val else None,
        epochs=config.epochs,
        class_weight=weights,
        callbacks=cbs,
        shuffle=False,  # tf.data shuffles
        verbose=0,
    )
    if best_weights.is_file():
        model.load_weights(best_weights)
    history = _read_history(history_csv)
    tmp = work / f".{FINAL_NAME}.tmp.keras"
    model.save(tmp)
    tmp.replace(final)
    return TrainOutcome(model, history, _best_epoch(history, monitor), len(previous.get("loss", [])), work)


def _best_epoch(history: dict[str, list[float]], monitor: str = "val_accuracy") -> int:
    values = history.get(monitor) or history.get("accuracy") or [0.0]
    return int(np.argmax(values)) + 1
