"""Training data: face crops packed once into a uint8 array cache, fed through ``tf.data``.

:func:`preprocess_face` is the one function that turns a grayscale face crop into model input;
training, evaluation and the realtime client all call it, so they cannot drift apart.
Pixel scaling to [0, 1] happens inside the model (a ``Rescaling`` layer), never here.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .imageio import atomic_write, decode, read_bytes
from .manifest import SPLITS, content_hash

DEFAULT_SIZE = 48


def preprocess_face(gray: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """A grayscale face crop (any size, or BGR) as a ``size`` x ``size`` uint8 image."""
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_BGR2GRAY)
    if gray.shape == (size, size):
        return np.ascontiguousarray(gray, dtype=np.uint8)
    shrinking = gray.shape[0] > size or gray.shape[1] > size
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def as_batch(faces: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Stack preprocessed faces into the model's input layout: float32 (N, size, size, 1), 0-255."""
    return np.asarray(faces, dtype=np.float32)[..., np.newaxis]


@dataclass
class PackedFaces:
    """Face pixels (N, size, size) uint8, integer labels and split names, aligned by row."""

    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    labels: tuple[str, ...]
    key: str

    def part(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        mask = self.split == split
        return self.x[mask], self.y[mask]

    def counts(self) -> dict[str, int]:
        return {s: int((self.split == s).sum()) for s in SPLITS}


def _load_face(path: Path, size: int) -> np.ndarray:
    return preprocess_face(decode(read_bytes(path), mode="gray"), size)


def pack_faces(
    df: pd.DataFrame, labels: tuple[str, ...], data_dir: str | Path, size: int = DEFAULT_SIZE, workers: int = 4
) -> PackedFaces:
    """Pack the usable, split rows of a manifest into ``<data_dir>/cache/faces-<key>.npz``.

    The key hashes the manifest's content and the size, so the cache is rebuilt only when the data
    changes; a later call loads it in milliseconds. Crops are decoded once, in parallel.
    """
    rows = df[(df["status"] == "ok") & df["split"].notna()].sort_values(["split", "face_path"], kind="stable")
    key = f"{content_hash(rows)}-{size}"
    cache = Path(data_dir) / "cache" / f"faces-{key}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return PackedFaces(z["x"], z["y"], z["split"].astype(str), labels, key)
    faces_root = Path(data_dir) / "faces"
    with ThreadPoolExecutor(workers) as pool:
        images = list(pool.map(lambda p: _load_face(faces_root / p, size), rows["face_path"]))
    index = {label: i for i, label in enumerate(labels)}
    x = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    y = rows["label"].map(index).to_numpy(dtype=np.int32)
    split = rows["split"].to_numpy(dtype=str)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, split=split)
    atomic_write(cache, buf.getvalue())
    return PackedFaces(x, y, split, labels, key)


def class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    """Balanced class weights (n / (k * count)); classes absent from ``y`` get weight 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return {i: float(total / (n_classes * c)) if c else 1.0 for i, c in enumerate(counts)}


def make_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, seed: int = 0):
    """A ``tf.data`` pipeline over packed faces: shuffle (training), batch, augment (training), prefetch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x[..., np.newaxis], y))
    if training:
        ds = ds.shuffle(min(len(x), 20_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        augment = augmentation(seed)
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def augmentation(seed: int = 0):
    """On-the-fly augmentation: horizontal flip (as the seed did), small shifts, rotations and zoom."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomRotation(0.05, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 3),
        ],
        name="augmentation",
    )
