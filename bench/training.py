"""Training cost: the seed's way against this pipeline, back to back on the same FER2013 images.

    python -m bench.training [--n 2048] [--steps 12] [--json F]

1. The input pipelines alone (samples/s, no model; median of three passes over ``--n`` faces):
   the seed's Keras ``DirectoryIterator`` (``ImageDataGenerator(horizontal_flip=True)
   .flow_from_directory``: PIL decodes every JPEG every epoch; Keras 3 keeps it only as legacy),
   the same iterator with this project's augmentation ranges, Keras 3's tf.data replacement
   ``image_dataset_from_directory`` (no augmentation), and the packed uint8 cache fed through
   ``tf.data`` with and without augmentation.
2. Seconds per FER2013 epoch (28,709 faces, batch 64): the median of ``--steps`` timed training
   steps after three warm-up steps, times the steps of an epoch. ``seed_cnn`` fed the seed's way,
   every other registered model fed by this pipeline with the settings ``emotion train`` uses
   (op determinism on). Timing single steps avoids the tracing and warm-up that a short ``fit``
   mixes into its wall time.
3. The ``cpu`` recipe's speed-ups, one at a time, on the default model, ``vgg_wide`` and ``res_mid``:
   float32 on whole 48 px faces with Keras's own BatchNormalization, ``mixed_bfloat16`` (what
   ``--precision auto`` picks on a CPU with bfloat16 instructions), bfloat16 on the 40 px training
   crops the presets train on, and those with TensorFlow's fused batch norm as the training kernel
   (``emotion_core.models.kernels``: what ``emotion train`` trains with). ``--recipe-only`` runs this part alone.
4. How close the ``cpu`` recipe runs to the machine (``--roofline``, run alone): each network's
   multiply-adds per 40 px face (its convolutions and dense layers), the training FLOPs they imply
   (forward and backward, ~3x the forward's 2 FLOPs a multiply-add), the FLOP rate its recipe step
   reaches, and that rate as a share of a large dense matmul's on the same cores in the same run
   (2048x2048, bfloat16 and float32). A share near one means faster kernels cannot buy many more
   epochs in the hour; only less arithmetic can.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.data_stages import datasets_dir  # noqa: E402

FER_TRAIN = 28_709
BATCH = 64
WARMUP_STEPS = 3


def sample_tree(n: int, dest: Path) -> list[tuple[Path, str]]:
    train = datasets_dir() / "fer2013" / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = [(f, c) for c in classes for f in sorted((train / c).glob("*.jpg"))[: n // len(classes) + 1]][:n]
    for f, c in files:
        (dest / c).mkdir(parents=True, exist_ok=True)
        (dest / c / f.name).symlink_to(f)
    return files


def samples_per_s(batches, passes: int = 3) -> float:
    """Median samples/s over ``passes`` full passes of an iterable of (x, y) batches."""
    rates = []
    for _ in range(passes):
        count, start = 0, time.perf_counter()
        for x, _y in batches():
            count += int(x.shape[0])
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def seed_iterator(folder: str, **augmentation):
    """The seed's input: ``ImageDataGenerator.flow_from_directory``, 48x48 grayscale, batch 64."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    generator = ImageDataGenerator(rescale=1.0 / 255, **augmentation)
    return generator.flow_from_directory(
        folder,
        target_size=(48, 48),
        color_mode="grayscale",
        batch_size=BATCH,
        class_mode="sparse",
        shuffle=True,
        seed=1,
    )


def seconds_per_epoch(model, data, steps: int) -> dict[str, float]:
    """Median seconds of one training step (after warm-up) and the FER2013 epoch it implies."""
    import keras

    times: list[float] = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=5e-4), loss="sparse_categorical_crossentropy")
    model.fit(data, epochs=1, steps_per_epoch=WARMUP_STEPS + steps, callbacks=[StepTimer()], verbose=0)
    step = statistics.median(times[WARMUP_STEPS:])
    return {"s_per_step": step, "s_per_fer_epoch": step * math.ceil(FER_TRAIN / BATCH), "params": model.count_params()}


def time_model(
    name: str, n: int, steps: int, precision: str = "float32", crop: int | None = None, fused: bool = True
) -> dict[str, float]:
    """Seconds per FER2013 epoch of one model: ``seed_cnn`` fed the seed's way, the others by this
    pipeline with op determinism on, built as ``emotion train`` builds them for ``precision`` and
    ``crop`` (``fused`` False: with Keras's own batch norm in training)."""
    import tensorflow as tf

    from emotion_core.dataset import make_train_dataset, preprocess_face
    from emotion_core.imageio import decode, read_bytes
    from emotion_core.models import build_model
    from emotion_core.train import TrainConfig, training_model

    with tempfile.TemporaryDirectory() as tmp:
        files = sample_tree(n, Path(tmp))
        if name == "seed_cnn":
            return seconds_per_epoch(build_model(name, 48, 7), seed_iterator(tmp, horizontal_flip=True), steps)
        classes = sorted({c for _, c in files})
        x = np.stack([preprocess_face(decode(read_bytes(f), mode="gray")) for f, _ in files])
        y = np.array([classes.index(c) for _, c in files], np.int32)
    tf.config.experimental.enable_op_determinism()
    data, _ = make_train_dataset(x, y, BATCH, seed=1, first_epoch=0, epochs=4, crop=crop)
    model = training_model(TrainConfig(model=name, precision=precision, crop=crop), 7, fused_batch_norm=fused)
    return seconds_per_epoch(model, data.repeat(), steps)


def in_fresh_process(function, *args):
    """``function(*args)`` in a new process (spawn), so it inherits no other timing's threads or memory."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def timed_in_fresh_process(
    name: str, n: int, steps: int, precision: str = "float32", crop: int | None = None, fused: bool = True
) -> dict[str, float]:
    """:func:`time_model` in a new process, so no model's timing inherits another's threads or memory."""
    return in_fresh_process(time_model, name, n, steps, precision, crop, fused)


def recipe_speedups(n: int, steps: int, models: tuple[str, ...]) -> dict:
    """Part 3: seconds per FER2013 epoch of each model as the ``cpu`` recipe's speed-ups add up, one
    at a time, from float32 whole faces with Keras's batch norm; ratios against that baseline."""
    from emotion_core.train import auto_precision

    recipe: dict = {"auto_precision_here": auto_precision()}
    steps_of = {
        "float32_48px_keras_bn": ("float32", None, False),
        "bfloat16_48px_keras_bn": ("mixed_bfloat16", None, False),
        "bfloat16_crop40_keras_bn": ("mixed_bfloat16", 40, False),
        "bfloat16_crop40_fused_bn": ("mixed_bfloat16", 40, True),
    }
    for name in models:
        seconds = {
            what: timed_in_fresh_process(name, n, steps, precision, crop, fused)["s_per_fer_epoch"]
            for what, (precision, crop, fused) in steps_of.items()
        }
        baseline = seconds["float32_48px_keras_bn"]
        recipe[name] = {
            "s_per_fer_epoch": seconds,
            "speedup_vs_float32_48px_keras_bn": {what: baseline / s for what, s in seconds.items()},
            "fused_bn_speedup": seconds["bfloat16_crop40_keras_bn"] / seconds["bfloat16_crop40_fused_bn"],
        }
        print(json.dumps({name: recipe[name]}, indent=2), flush=True)
    return recipe


def forward_multiply_adds(net) -> int:
    """Multiply-adds of one face through ``net``'s convolutions and dense layers (the rest, pools,
    norms and activations, is element-wise and small)."""
    import keras

    total = 0
    for layer in net.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, filters = layer.output.shape[1:]
            total += height * width * filters * math.prod(layer.kernel.shape[:3])
        elif isinstance(layer, keras.layers.Dense):
            total += math.prod(layer.kernel.shape)
    return total


def matmul_gflops(dtype: str, size: int = 2048, repeats: int = 10) -> float:
    """The best of three timings of ``repeats`` traced ``size``-square matmuls, in GFLOP/s."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size), seed=1), dtype)
    matmul = tf.function(tf.matmul)
    matmul(a, a).numpy()
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, a)
        out.numpy()
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best / 1e9


def roofline(n: int, steps: int, models: tuple[str, ...], crop: int = 40) -> dict:
    """Part 4: each network's training FLOPs per face at ``crop`` px, the rate its ``cpu`` recipe step
    reaches, and that rate's share of a dense matmul's on the same cores, measured in this run."""
    from emotion_core.models import build_model
    from emotion_core.train import auto_precision

    precision = auto_precision()
    peak = {dtype: in_fresh_process(matmul_gflops, dtype) for dtype in ("bfloat16", "float32")}
    result: dict = {"precision": precision, "crop": crop, "matmul_gflops": peak, "models": {}}
    matmul = peak["bfloat16" if precision == "mixed_bfloat16" else "float32"]
    for name in models:
        macs = forward_multiply_adds(build_model(name, crop, 7))
        step = timed_in_fresh_process(name, n, steps, precision, crop)["s_per_step"]
        flops = 6 * macs  # forward 2 FLOPs a multiply-add; the backward pass about twice the forward
        achieved = flops * BATCH / step / 1e9
        result["models"][name] = {
            "forward_mmacs_per_face": macs / 1e6,
            "training_mflops_per_face": flops / 1e6,
            "s_per_step": step,
            "achieved_gflops": achieved,
            "share_of_matmul": achieved / matmul,
        }
        print(json.dumps({name: result["models"][name]}, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048, help="FER2013 training faces to sample")
    parser.add_argument("--steps", type=int, default=12, help="timed training steps per model")
    parser.add_argument("--recipe-only", action="store_true", help="only part 3: the cpu recipe's speed-ups")
    parser.add_argument("--roofline", action="store_true", help="only part 4: FLOP rates against a matmul's")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import keras

    from emotion_core.dataset import make_tf_dataset, preprocess_face
    from emotion_core.imageio import decode, read_bytes
    from emotion_core.models import DEFAULT_MODEL, model_names

    result: dict = {"n": args.n, "batch": BATCH, "machine": f"{os.cpu_count()} cores"}
    if args.recipe_only or args.roofline:
        recipe_models = (DEFAULT_MODEL, "vgg_wide", "res_mid")
        if args.recipe_only:
            result["cpu_recipe_speedups"] = recipe_speedups(args.n, args.steps, recipe_models)
        if args.roofline:
            result["roofline"] = roofline(args.n, args.steps, recipe_models)
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = sample_tree(args.n, Path(tmp))
        classes = sorted({c for _, c in files})
        x = np.stack([preprocess_face(decode(read_bytes(f), mode="gray")) for f, _ in files])
        y = np.array([classes.index(c) for _, c in files], np.int32)
        ours_ranges = dict(horizontal_flip=True, width_shift_range=0.1, height_shift_range=0.1)
        ours_ranges.update(rotation_range=18, zoom_range=0.1)
        seed_flip = seed_iterator(tmp, horizontal_flip=True)
        seed_same = seed_iterator(tmp, **ours_ranges)
        modern = keras.utils.image_dataset_from_directory(
            tmp, color_mode="grayscale", image_size=(48, 48), batch_size=BATCH, seed=1, verbose=False
        )
        rates = {
            "seed_directory_iterator_flip": samples_per_s(lambda: (seed_flip[i] for i in range(len(seed_flip)))),
            "seed_directory_iterator_same_augmentation": samples_per_s(
                lambda: (seed_same[i] for i in range(len(seed_same)))
            ),
            "keras_image_dataset_from_directory_no_augmentation": samples_per_s(lambda: modern),
            "ours_augmented": samples_per_s(lambda: make_tf_dataset(x, y, BATCH, training=True)),
            "ours_no_augmentation": samples_per_s(lambda: make_tf_dataset(x, y, BATCH, training=False)),
        }
        result["input_samples_per_s"] = rates
        result["input_speedup_vs_seed"] = rates["ours_augmented"] / rates["seed_directory_iterator_flip"]
        result["input_speedup_vs_seed_same_augmentation"] = (
            rates["ours_augmented"] / rates["seed_directory_iterator_same_augmentation"]
        )
        result["input_speedup_vs_image_dataset_from_directory"] = (
            rates["ours_augmented"] / rates["keras_image_dataset_from_directory_no_augmentation"]
        )
        print(json.dumps(result, indent=2), flush=True)

    epochs = {"seed_cnn (seed's input)": timed_in_fresh_process("seed_cnn", args.n, args.steps)}
    for name in (m for m in model_names() if m != "seed_cnn"):
        epochs[name] = timed_in_fresh_process(name, args.n, args.steps)
    result["training"] = epochs
    baseline = epochs["seed_cnn (seed's input)"]["s_per_fer_epoch"]
    result["epoch_speedup_vs_seed_cnn"] = {m: baseline / v["s_per_fer_epoch"] for m, v in epochs.items()}
    result["default_model"] = DEFAULT_MODEL
    print(json.dumps(result, indent=2), flush=True)

    result["cpu_recipe_speedups"] = recipe_speedups(args.n, args.steps, (DEFAULT_MODEL, "vgg_wide", "res_mid"))
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
