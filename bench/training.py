"""Training cost: the seed's way against this pipeline, back to back on the same FER2013 images.

    python -m bench.training [--n 2048] [--epochs 1]

1. the input pipelines alone (samples/s, no model): Keras's directory iterator
   (``image_dataset_from_directory``, decoding JPEGs every epoch) vs the packed uint8 cache fed
   through ``tf.data`` with augmentation;
2. seconds per epoch: ``seed_cnn`` on the directory iterator vs the default model on this pipeline,
   measured on ``--n`` images and scaled to the 28,709 images of FER2013/train.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench.data_stages import datasets_dir  # noqa: E402

FER_TRAIN = 28_709


def sample_tree(n: int, dest: Path) -> list[tuple[Path, str]]:
    train = datasets_dir() / "fer2013" / "train"
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    files = [(f, c) for c in classes for f in sorted((train / c).glob("*.jpg"))[: n // len(classes) + 1]][:n]
    for f, c in files:
        (dest / c).mkdir(parents=True, exist_ok=True)
        (dest / c / f.name).symlink_to(f)
    return files


def throughput(ds, epochs: int = 2) -> float:
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _y in ds:
            count += int(x.shape[0])
    return count / (time.perf_counter() - start)


def epoch_seconds(model, ds, n: int) -> float:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy")
    model.fit(ds.take(2), epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(ds, epochs=1, verbose=0)
    return (time.perf_counter() - start) * FER_TRAIN / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import keras

    from emotion_core.dataset import make_tf_dataset, preprocess_face
    from emotion_core.imageio import decode, read_bytes
    from emotion_core.models import DEFAULT_MODEL, build_model

    with tempfile.TemporaryDirectory() as tmp:
        files = sample_tree(args.n, Path(tmp))
        n = len(files)
        seed_ds = keras.utils.image_dataset_from_directory(
            tmp,
            color_mode="grayscale",
            image_size=(48, 48),
            batch_size=64,
            label_mode="int",
            shuffle=True,
            seed=1,
            verbose=False,
        )
        classes = sorted({c for _, c in files})
        x = np.stack([preprocess_face(decode(read_bytes(f), mode="gray")) for f, _ in files])
        y = np.array([classes.index(c) for _, c in files], np.int32)
        ours = make_tf_dataset(x, y, 64, training=True)
        result = {
            "n": n,
            "input_seed_samples_per_s": throughput(seed_ds),
            "input_ours_samples_per_s": throughput(ours),
            "input_ours_no_augmentation_samples_per_s": throughput(make_tf_dataset(x, y, 64, training=False)),
            "seed_cnn_seed_input_s_per_fer_epoch": epoch_seconds(build_model("seed_cnn", 48, len(classes)), seed_ds, n),
            f"{DEFAULT_MODEL}_our_input_s_per_fer_epoch": epoch_seconds(
                build_model(DEFAULT_MODEL, 48, len(classes)), ours, n
            ),
        }
    result["input_speedup"] = result["input_ours_samples_per_s"] / result["input_seed_samples_per_s"]
    result["epoch_speedup"] = (
        result["seed_cnn_seed_input_s_per_fer_epoch"] / result[f"{DEFAULT_MODEL}_our_input_s_per_fer_epoch"]
    )
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
