"""Model training over packed faces: class weights, early stopping, best-epoch weights and
epoch checkpoints, so an interrupted training resumes from its last finished epoch."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .budget import TimeBudget, epoch_planner, read_plan
from .dataset import PackedFaces, class_weights, make_tf_dataset, make_train_dataset
from .imageio import atomic_write
from .models import (
    DEFAULT_MODEL,
    architecture_fingerprint,
    average_of,
    build_model,
    model_spec,
    with_flip_average,
    with_standardized_faces,
)

FINAL_NAME = "final.keras"
PRECISIONS = ("float32", "mixed_bfloat16")
OPTIMIZERS = ("adam", "sgd")


def auto_precision(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """``mixed_bfloat16`` when the CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16: measured
    1.4x the training steps of float32 on vgg_mid), else ``float32`` (bfloat16 would be emulated)."""
    try:
        flags = set(Path(cpuinfo).read_text().split())
    except OSError:
        return "float32"
    return "mixed_bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training. ``learning_rate`` None takes the model's default."""

    model: str = DEFAULT_MODEL
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float | None = None
    patience: int | None = 8  # epochs without a better validation score before stopping; None: never stop early
    label_smoothing: float = 0.0  # share of each target spread over the other classes
    input_size: int = 48
    class_weight_power: float = 0.5  # 0: no class weights, 1: fully balanced (see dataset.class_weights)
    seed: int = 1337
    crop: int | None = None  # train on random crop x crop windows of the faces (models with global pooling)
    precision: str = "auto"  # "float32", "mixed_bfloat16", or "auto": bfloat16 where the CPU computes it natively
    keep: str = "best"  # the weights kept: "best" (the best val-split epoch) or "last" (the schedule's end)
    flip_average: bool = False  # the saved model averages each face's probabilities with its mirror image's
    weight_decay: float = 0.0  # decoupled weight decay on the kernels (AdamW with adam), per unit of learning rate
    budget_minutes: float | None = None  # fewer epochs where ``epochs`` would not end within it (emotion_core.budget)
    erase: float = 0.0  # share of training faces with a random rectangle replaced by noise (random erasing)
    optimizer: str = "adam"  # "adam", or "sgd": SGD with Nesterov momentum 0.9
    mixup: float = 0.0  # alpha of mixup's Beta distribution (0: off): batches blended with themselves shuffled
    augment: float = 1.0  # scale of the training warp's ranges (1: shift 10%, rotate 18 deg, zoom 10%; 0: flips only)
    standardize: bool = False  # the network divides out each face's own brightness and contrast (saved with it)
    members: tuple[TrainConfig, ...] = ()  # an ensemble (see ensemble()): its own fields but these are unused

    def resolved(self) -> TrainConfig:
        """This config with the model's default learning rate and the precision ``auto`` picks; a
        model with a fixed input size (``seed_cnn``) trains on whole faces when crops are asked for.
        An ensemble's members are resolved, and its ``model`` names them."""
        if self.members:
            return self._resolved_ensemble()
        spec = model_spec(self.model)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"the learning rate must be positive, got {self.learning_rate}")
        resolved = self if self.learning_rate else replace(self, learning_rate=spec.learning_rate)
        if resolved.crop and not spec.any_size:
            resolved = replace(resolved, crop=None)
        if resolved.precision == "auto":
            resolved = replace(resolved, precision=auto_precision())
        if resolved.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {resolved.keep!r}")
        if resolved.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {resolved.precision!r}; choose one of {PRECISIONS} or 'auto'")
        if resolved.budget_minutes is not None and not resolved.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be positive, got {resolved.budget_minutes}")
        if resolved.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {resolved.optimizer!r}; choose one of {OPTIMIZERS}")
        if not resolved.mixup >= 0.0:
            raise ValueError(f"mixup must be a Beta alpha >= 0 (0: off), got {resolved.mixup}")
        if not 0.0 <= resolved.augment <= 2.0:
            raise ValueError(f"augment must scale the warp's ranges by 0 to 2, got {resolved.augment}")
        if not 0.0 <= resolved.erase <= 1.0:
            raise ValueError(f"erase must be a share between 0 and 1, got {resolved.erase}")
        if resolved.crop is not None and not 8 <= resolved.crop <= resolved.input_size:
            raise ValueError(f"crop must be between 8 and the input size {resolved.input_size}, got {resolved.crop}")
        if resolved.crop is not None and (resolved.input_size - resolved.crop) % spec.stride:
            raise ValueError(
                f"crop must differ from the input size {resolved.input_size} by a multiple of {resolved.model}'s "
                f"stride {spec.stride}, got {resolved.crop}: only then do its poolings floor crops and faces alike"
            )
        return resolved

    def _resolved_ensemble(self) -> TrainConfig:
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(self.members)}")
        if any(member.members for member in self.members):
            raise ValueError("an ensemble's member cannot be an ensemble itself")
        if self.budget_minutes is not None and not self.budget_minutes > 0:
            raise ValueError(f"budget_minutes must be positive, got {self.budget_minutes}")
        members = tuple(member.resolved() for member in self.members)
        if len({member.input_size for member in members}) != 1:
            raise ValueError("an ensemble's members must take faces of one size")
        return replace(self, model=ensemble_name(members), input_size=members[0].input_size, members=members)

    def key(self, data_key: str) -> str:
        resolved = self.resolved()
        fields = asdict(resolved)
        for name, default in KEY_STABLE_DEFAULTS.items():  # fields added later: at their default, keys stay as before
            if fields[name] == default:
                del fields[name]
        if resolved.members:  # an ensemble: the members' own keys (their data and architectures in them)
            fields["members"] = [member.key(data_key) for member in resolved.members]
            return hashlib.sha256(json.dumps([fields, data_key], sort_keys=True).encode()).hexdigest()[:16]
        payload = json.dumps([fields, data_key, architecture_fingerprint(self.model)], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ensemble_name(members: tuple[TrainConfig, ...]) -> str:
    """``"vgg_wide+res_mid"``: an ensemble's ``model``."""
    return "+".join(member.model for member in members)


def ensemble(*members: TrainConfig, budget_minutes: float | None = None) -> TrainConfig:
    """An ensemble: each member trains as its own training (one after another, each within an equal
    share of ``budget_minutes``: :func:`members_in_budget`), and the saved model averages the
    members' saved models' probabilities (:func:`~emotion_core.models.average_of`)."""
    return TrainConfig(
        model=ensemble_name(members), members=members, budget_minutes=budget_minutes, input_size=members[0].input_size
    )


def members_in_budget(config: TrainConfig) -> list[TrainConfig]:
    """An ensemble's members as they train, first to last: each with an equal share of the
    ensemble's time budget (the first's counted from the command's start, so earlier stages count
    against it; each later one's from its own start), or, without a budget, their epochs."""
    share = config.budget_minutes / len(config.members) if config.budget_minutes else None
    return [replace(member, budget_minutes=share) for member in config.members]


def describe_members(config: TrainConfig) -> str:
    """``"vgg_wide (300 epochs), res_mid (300 epochs)"``: an ensemble's members, empty for one network."""
    return ", ".join(f"{member.model} ({member.epochs} epochs)" for member in config.members)


#: Fields added after trainings were keyed without them: left out of the key at these defaults.
KEY_STABLE_DEFAULTS = {
    "weight_decay": 0.0,
    "budget_minutes": None,
    "erase": 0.0,
    "optimizer": "adam",
    "mixup": 0.0,
    "augment": 1.0,
    "standardize": False,
    "members": (),
}

CPU_EPOCHS = 100

#: The recipe of the cosine presets: the schedule runs to its end (no early stopping: its last,
#: low-rate epochs are where it gains most) and its last epoch is kept (picking the best of many
#: noisy val-split scores chose a mid-schedule epoch that scored 1 point less on FER2013's public_test),
#: and the saved model averages each face with its mirror image (+1.4 points there, 2x the model's cost).
COSINE = TrainConfig(batch_size=64, patience=None, label_smoothing=0.1, crop=40, keep="last", flip_average=True)

#: Named presets.
PRESETS: dict[str, TrainConfig] = {
    "cpu": replace(COSINE, epochs=CPU_EPOCHS, budget_minutes=60),
    "cpu-long": ensemble(
        replace(COSINE, model="vgg_wide", epochs=300), replace(COSINE, model="res_mid", epochs=300), budget_minutes=240
    ),
    "cpu-pair": ensemble(
        replace(COSINE, model="vgg_wide", epochs=CPU_EPOCHS),
        replace(COSINE, model="res_mid", epochs=CPU_EPOCHS),
        budget_minutes=60,
    ),
    "gpu": replace(COSINE, model="vgg_wide", epochs=300, batch_size=128),
    "seed": TrainConfig(model="seed_cnn", epochs=15, batch_size=64, patience=15),
    "demo": replace(COSINE, epochs=20, batch_size=32, crop=None),
    "smoke": replace(COSINE, epochs=1, batch_size=32),  # the cpu recipe, briefly
}

#: What each preset costs, measured on FER2013 (28,709 faces) end to end: `emotion pipeline
#: --face-mode whole`, 2 cores unless said otherwise. The CLI's help and the README quote these.
PRESET_BUDGETS: dict[str, str] = {
    "cpu": "up to 100 epochs of vgg_mid on 40 px crops, bfloat16, within 60 min for the whole command: "
    "FER2013 end to end in 39 min on 2 cores of an Intel Xeon with AMX-BF16, 56 min on an AMD EPYC with "
    "AVX512-BF16; fewer epochs where they do not fit (~37 estimated on a CPU without bfloat16)",
    "cpu-long": "the average of vgg_wide and res_mid, each up to 300 epochs within half of 240 min, trained one "
    "after the other: on 2 cores of an Intel Xeon with AMX-BF16 ~23 s an epoch of each with the fused batch norm, "
    "so about all 300 of each (estimated; measured before it, at ~40 and ~34 s an epoch, with halves of 115 min: "
    "167 and 201 epochs, 111 and 115 min end to end)",
    "cpu-pair": "the average of vgg_wide and res_mid (cpu-long's networks), each up to 100 epochs within half of "
    "60 min: FER2013 end to end in 57 min on 2 cores of an Intel Xeon with AMX-BF16 (72 and 70 epochs), 58 min "
    "on an AMD EPYC with AVX512-BF16 (46 and 41 epochs: there it scores below cpu)",
    "gpu": "300 epochs of vgg_wide, batch 128: not yet measured on a GPU",
    "seed": "the seed's network and schedule: ~4.7 h for FER2013 on 2 cores",
    "demo": "20 epochs, for the generated demo faces",
    "smoke": "1 epoch: checks that training runs",
}


@dataclass
class TrainOutcome:
    model: object  # keras.Model with the kept epoch's weights, float32, whole faces
    history: dict[str, list[float]]
    kept_epoch: int  # 1-based: the best val-split epoch, or the last one (TrainConfig.keep)
    resumed_from_epoch: int  # 0 when the training started fresh
    work_dir: Path
    plan: dict | None = None  # the time budget's plan (emotion_core.budget.read_plan), if it had one
    members: tuple[TrainOutcome, ...] = ()  # an ensemble's members' outcomes (its own history is empty)


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


def read_history(path: Path) -> dict[str, list[float]]:
    """A training's ``history.csv`` (one row per finished epoch) as lists per column; {} if absent."""
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
    packed: PackedFaces,
    config: TrainConfig,
    work_dir: str | Path,
    callbacks: list | None = None,
    started_at: float | None = None,
    clock=None,
) -> TrainOutcome:
    """Train ``config.model`` on the packed train split, validating on the val split.

    Work files live in ``work_dir``: an epoch checkpoint (weights, optimizer and callback state),
    the per-epoch history, the best epoch's weights, and the final model, whose presence makes a
    rerun skip training altogether. Training is deterministic (seeded, deterministic ops, batches
    and dropout masks that depend on the epoch alone), so a run killed at any point and resumed
    from its last checkpoint ends with the same weights as an uninterrupted one.

    With ``config.budget_minutes``, counted from ``started_at`` (``clock()`` time, default: now),
    the first epoch is timed and the schedule cut to the epochs that fit (``emotion_core.budget``).
    """
    import keras
    import tensorflow as tf

    check_trainable(packed)
    config = config.resolved()
    if config.members:
        raise ValueError("an ensemble trains each member as its own training, then averages them (train_ensemble)")
    spec = model_spec(config.model)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    history_csv, final = work / "history.csv", work / FINAL_NAME
    if final.is_file():
        history = read_history(history_csv)
        model = keras.saving.load_model(final, compile=False, safe_mode=True)
        kept = _kept_epoch(history, config.keep)
        return TrainOutcome(model, history, kept, len(history.get("loss", [])), work, read_plan(work))
    budget = None
    if config.budget_minutes:
        clock = clock or time.time
        budget = TimeBudget(config.budget_minutes, clock() if started_at is None else started_at, clock)

    tf.config.experimental.enable_op_determinism()
    x_train, y_train = packed.part("train")
    x_val, y_val = packed.part("val")
    has_val = len(x_val) > 0
    monitor = "val_accuracy" if has_val else "accuracy"
    n_classes = len(packed.labels)
    with keras_seeds_of_its_own(config.seed):
        model = training_model(config, n_classes)
    model.compile(optimizer=_optimizer(config), loss=_loss(config), metrics=["accuracy"])
    patience = config.patience if config.patience is not None else config.epochs + 1
    early = keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience)
    planner = epoch_planner(work, config.epochs, budget)
    if spec.schedule == "cosine":  # over the planned epochs: the first epoch's rate does not depend on them
        rate = keras.callbacks.LearningRateScheduler(
            lambda epoch, _rate: cosine_rate(epoch, base=config.learning_rate, epochs=planner.epochs)
        )
        counters = {"early_stopping": early}
    else:
        rate = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss" if has_val else "loss", factor=spec.lr_factor, patience=spec.lr_patience
        )
        counters = {"early_stopping": early, "plateau": rate}
    checkpoint = epoch_checkpoint(work / "checkpoint", monitor, config.seed, counters)
    start = checkpoint.restore(model)
    _truncate_history(history_csv, start)
    if start >= planner.epochs or checkpoint.stopped:
        return _finish(model, work, monitor, start, config, n_classes)
    dataset, steps = make_train_dataset(
        x_train,
        y_train,
        config.batch_size,
        seed=config.seed,
        first_epoch=start,
        epochs=config.epochs,
        crop=config.crop,
        erase=config.erase,
        mixup=config.mixup,
        n_classes=n_classes,
        augment=config.augment,
    )
    validation = make_tf_dataset(x_val, y_val, 256, training=False) if has_val else None
    weights = class_weights(y_train, n_classes, config.class_weight_power) if config.class_weight_power else None
    if _categorical(config):  # the categorical loss takes one-hot targets (mixup's are blended already)
        validation = _one_hot(validation, n_classes) if validation is not None else None
        dataset = _weighted_targets(dataset, weights) if config.mixup else _one_hot(dataset, n_classes)
    model.fit(
        dataset,
        validation_data=validation,
        initial_epoch=start,
        epochs=config.epochs,
        steps_per_epoch=steps,
        class_weight=None if config.mixup else weights,
        callbacks=[keras.callbacks.CSVLogger(str(history_csv), append=True), early, rate, planner, checkpoint]
        + list(callbacks or []),
        shuffle=False,  # the dataset is already in its (seed, epoch) order
        verbose=0,
    )
    return _finish(model, work, monitor, start, config, n_classes)


@contextlib.contextmanager
def keras_seeds_of_its_own(seed: int):
    """Seed Python, NumPy, TensorFlow and Keras for a training (``keras.utils.set_random_seed``),
    and build its network inside this block with Keras's seeds drawn from a generator of its own.

    Every Keras initializer and dropout layer takes its seed, when it is made, from Python's global
    ``random``, which the orchestrator's threads use too: one draw of theirs while the network is
    built changes its initial weights (the likely cause of a twenty-kill run under load whose resumed
    pipeline trained other weights than its clean run from the first epoch on). Inside this block
    Keras draws from ``random.Random(seed)``, the sequence the seeded global generator gives when
    nothing else draws from it, so every training keeps the weights it had before.
    """
    import random

    import keras
    from keras.src.random import seed_generator  # make_default_seed() draws from its python_random

    keras.utils.set_random_seed(seed)
    shared = getattr(seed_generator, "python_random", None)
    if shared is not random:  # a Keras that seeds otherwise: seeded as above (a test tells the difference)
        yield
        return
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def _categorical(config: TrainConfig) -> bool:
    """Whether the loss takes (one-hot or blended) targets rather than class numbers."""
    return bool(config.label_smoothing or config.mixup)


def _loss(config: TrainConfig):
    import keras

    if _categorical(config):
        return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    return "sparse_categorical_crossentropy"


def _weighted_targets(dataset, weights: dict[int, float] | None):
    """Blended targets with the blend of their classes' weights as sample weights (Keras's
    ``class_weight`` would weigh a blend by its larger share's class alone)."""
    import tensorflow as tf

    if not weights:
        return dataset
    table = tf.constant([weights[i] for i in range(len(weights))], tf.float32)
    return dataset.map(
        lambda x, y: (x, y, tf.linalg.matvec(y, table)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _network(config: TrainConfig, input_size: int | None, n_classes: int):
    """``config.model`` built for ``input_size``, standardizing each face when ``config.standardize``."""
    net = build_model(config.model, input_size, n_classes)
    return with_standardized_faces(net) if config.standardize else net


def training_model(config: TrainConfig, n_classes: int, fused_batch_norm: bool = True):
    """The network as it trains: in ``config.precision``, taking any face size when it trains on
    crops (and validates on whole faces), its batch norms on TensorFlow's fused kernel unless
    ``fused_batch_norm`` is False (:func:`~emotion_core.models.kernels.with_training_kernels`: the
    same maths, 1.4-1.9x a training step on 2 cores of an Intel Xeon with AMX-BF16, 1.0-1.4x on an
    AMD EPYC with AVX512-BF16)."""
    import keras

    from .models.kernels import with_training_kernels

    keras.mixed_precision.set_global_policy(config.precision)
    try:
        net = _network(config, None if config.crop else config.input_size, n_classes)
        return with_training_kernels(net) if fused_batch_norm else net
    finally:
        keras.mixed_precision.set_global_policy("float32")


def inference_model(config: TrainConfig, n_classes: int, trained=None):
    """The network as it is saved and used everywhere after training: Keras's own layers, float32,
    whole ``input_size`` faces, with ``trained``'s weights, flip-averaged when ``config.flip_average``;
    an ensemble's (untrained) is the average of its members' (:func:`~emotion_core.models.average_of`)."""
    import keras

    if config.members:
        return average_of([inference_model(member, n_classes) for member in config.members])
    keras.mixed_precision.set_global_policy("float32")
    model = _network(config, config.input_size, n_classes)
    if trained is not None:
        model.set_weights(trained.get_weights())
    if config.flip_average:
        model = with_flip_average(model)
    model.compile(loss=_loss(config), metrics=["accuracy"])  # evaluate() as the trained model had it
    return model


def _one_hot(dataset, n_classes: int):
    import tensorflow as tf

    return dataset.map(lambda x, y: (x, tf.one_hot(y, n_classes)), num_parallel_calls=tf.data.AUTOTUNE)


def _optimizer(config: TrainConfig):
    """Adam, or SGD with Nesterov momentum 0.9 (``config.optimizer``); with ``weight_decay``,
    decoupled weight decay (AdamW; for SGD the same as an L2 penalty) on the kernels only (not on
    BatchNorm's scale and offset or on biases, as usual)."""
    import keras

    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            learning_rate=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=decay
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, weight_decay=decay)
    if config.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def cosine_rate(epoch: int, _current: float = 0.0, *, base: float, epochs: int, warmup: int = 1) -> float:
    """The learning rate of ``epoch`` (0-based): a linear warm-up over ``warmup`` epochs, then a
    half cosine from ``base`` down to 2% of it at the last epoch."""
    import math

    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup - 1)
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _finish(model, work: Path, monitor: str, resumed_from: int, config: TrainConfig, n_classes: int) -> TrainOutcome:
    """Load the kept epoch's weights and write the final (float32, whole-face) model atomically."""
    best = best_weights_file(work / "checkpoint")
    if best is not None and config.keep == "best":
        model.load_weights(best)  # else the model holds the last finished epoch's weights
    model = inference_model(config, n_classes, trained=model)
    history = read_history(work / "history.csv")
    tmp = work / f".{FINAL_NAME}.tmp.keras"
    model.save(tmp)
    tmp.replace(work / FINAL_NAME)
    kept = _kept_epoch(history, config.keep, monitor)
    return TrainOutcome(model, history, kept, resumed_from, work, read_plan(work))


def train_ensemble(config: TrainConfig, members: list[TrainOutcome], work_dir: str | Path) -> TrainOutcome:
    """The ensemble of ``config`` from its trained members (in ``config.members``' order): one
    model averaging their saved models' probabilities, written atomically to ``work_dir`` (found
    there on a rerun, like a training's final model)."""
    import keras

    config = config.resolved()
    if len(members) != len(config.members):
        raise ValueError(f"the ensemble has {len(config.members)} members, got {len(members)} trained ones")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    final = work / FINAL_NAME
    if final.is_file():
        model = keras.saving.load_model(final, compile=False, safe_mode=True)
    else:
        model = average_of([member.model for member in members])
        tmp = work / f".{FINAL_NAME}.tmp.keras"
        model.save(tmp)
        tmp.replace(final)
    return TrainOutcome(model, {}, 0, 0, work, None, tuple(members))


def _truncate_history(path: Path, epochs: int) -> None:
    """Keep the history rows of the first ``epochs`` epochs (a killed run may have logged one more)."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) > epochs + 1:
        atomic_write(path, "".join(lines[: epochs + 1] if epochs else []).encode())


def _seed_generators(model) -> list:
    return [sg for layer in model._flatten_layers() for sg in getattr(layer, "_seed_generators", [])]


def best_weights_file(folder: Path) -> Path | None:
    """The best epoch's weights named by a checkpoint folder's ``state.json``, if any."""
    try:
        name = json.loads((Path(folder) / "state.json").read_text()).get("best_file")
    except (OSError, ValueError):
        return None
    return Path(folder) / name if name else None


def epoch_checkpoint(folder: Path, monitor: str, seed: int, counters: dict):
    """A Keras callback that checkpoints every epoch; see :func:`_checkpoint_class`."""
    return _checkpoint_class()(Path(folder), monitor, seed, counters)


@functools.cache
def _checkpoint_class():
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """After each epoch: the weights (with the optimizer's state), the best weights and the
        callbacks' counters, written atomically; :meth:`restore` resumes from them.

        Files: ``epoch-<n>.weights.h5``, ``best-<n>.weights.h5`` and ``state.json``, which names them
        and is replaced last, so a kill at any instant leaves a consistent checkpoint. At the start
        of every epoch the dropout layers' random state is set from (seed, epoch), so an epoch's
        masks do not depend on how many epochs this process ran before.
        """

        def __init__(self, folder: Path, monitor: str, seed: int, counters: dict):
            super().__init__()
            self.folder, self.monitor, self.seed, self.counters = folder, monitor, seed, counters
            self.state: dict = {}
            self.stopped = False

        def restore(self, model) -> int:
            """Load the last checkpoint into ``model``; returns the number of finished epochs."""
            for partial in self.folder.glob(".tmp-*"):  # a save that a kill interrupted
                partial.unlink(missing_ok=True)
            try:
                self.state = json.loads((self.folder / "state.json").read_text())
            except (OSError, ValueError):
                self.state = {}
            epoch = int(self.state.get("epoch", 0))
            if epoch:
                model.optimizer.build(model.trainable_variables)
                model.load_weights(self.folder / self.state["file"])
                self.stopped = bool(self.state.get("stopped"))
            return epoch

        def on_train_begin(self, logs=None):
            for name, callback in self.counters.items():  # after their own on_train_begin reset them
                for attr, value in self.state.get(name, {}).items():
                    setattr(callback, attr, value)

        def on_epoch_begin(self, epoch, logs=None):
            for i, generator in enumerate(_seed_generators(self.model)):
                generator.state.assign(keras.ops.convert_to_tensor([self.seed + i, epoch * 1_000_003], "uint32"))

        def on_epoch_end(self, epoch, logs=None):
            value = float((logs or {}).get(self.monitor, float("-inf")))
            self.folder.mkdir(parents=True, exist_ok=True)
            done = epoch + 1
            state = dict(self.state, epoch=done, file=self._save(f"epoch-{done}.weights.h5"))
            if state.get("best") is None or value > state["best"]:
                state["best"], state["best_file"] = value, self._save(f"best-{done}.weights.h5")
            for name, callback in self.counters.items():
                state[name] = {
                    attr: _plain(getattr(callback, attr))
                    for attr in ("wait", "best", "cooldown_counter", "stopped_epoch", "best_epoch")
                    if hasattr(callback, attr)
                }
            state["stopped"] = bool(getattr(self.model, "stop_training", False))
            atomic_write(self.folder / "state.json", json.dumps(state).encode(), durable=True)
            self.state = state
            for old in self.folder.glob("*.weights.h5"):  # only what state.json names is kept
                if old.name not in (state["file"], state["best_file"]):
                    old.unlink(missing_ok=True)

        def _save(self, name: str) -> str:
            tmp = self.folder / f".tmp-{name}"
            self.model.save_weights(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self.folder / name)
            return name

    return EpochCheckpoint


def _plain(value):
    """A JSON-friendly copy of a callback counter (numpy scalars, infinities)."""
    try:
        return float(value) if not isinstance(value, int) else value
    except (TypeError, ValueError):
        return None


def _kept_epoch(history: dict[str, list[float]], keep: str, monitor: str = "val_accuracy") -> int:
    if keep == "last":
        return len(history.get("loss", [])) or 1
    values = history.get(monitor) or history.get("accuracy") or [0.0]
    return int(np.argmax(values)) + 1
