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


def class_weights(y: np.ndarray, n_classes: int, power: float = 1.0) -> dict[int, float]:
    """Class weights ``(n / (k * count)) ** power``: 1 balances the classes fully, 0.5 halfway in log
    scale (FER2013's disgust, 1.5% of the faces, gets 3.1 instead of 9.4). Absent classes get 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    total = counts.sum()
    return {i: float((total / (n_classes * c)) ** power) if c else 1.0 for i, c in enumerate(counts)}


def make_tf_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, training: bool, seed: int = 0):
    """A ``tf.data`` pipeline over packed faces: batches of float32 faces, augmented when ``training``.

    Training batches come from :func:`make_train_dataset` for one epoch (order and augmentation
    depend only on ``seed``); evaluation batches keep the data's order.
    """
    if training:
        return make_train_dataset(x, y, batch_size, seed=seed, first_epoch=0, epochs=1)[0]
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x[..., np.newaxis], y))
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample indices of one epoch, as a (steps, batch) array; a function of (seed, epoch) only."""
    batch_size = min(batch_size, n)
    steps = n // batch_size
    return np.random.default_rng([seed, epoch]).permutation(n)[: steps * batch_size].reshape(steps, batch_size)


def make_train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, first_epoch: int, epochs: int):
    """Training batches for epochs ``first_epoch .. epochs-1``; returns ``(dataset, steps_per_epoch)``.

    Each epoch's shuffle and each batch's augmentation are functions of ``(seed, epoch, step)``
    alone, never of a random state that lives in the process, so a training resumed at epoch
    ``k`` in a new process sees exactly the batches an uninterrupted one would have.
    """
    import tensorflow as tf

    orders = [epoch_order(len(x), batch_size, seed, e) for e in range(first_epoch, epochs)]
    steps = orders[0].shape[0] if orders else 0
    index = np.concatenate(orders) if orders else np.zeros((0, max(1, min(batch_size, len(x)))), np.int64)
    keys = np.array([[seed, e * 1_000_003 + s] for e in range(first_epoch, epochs) for s in range(steps)], np.int64)
    faces = tf.constant(x[..., np.newaxis])
    labels = tf.constant(y)

    def batch(idx, key):
        images = tf.cast(tf.gather(faces, idx), tf.float32)
        return augment_batch(images, key), tf.gather(labels, idx)

    ds = tf.data.Dataset.from_tensor_slices((index, keys)).map(batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def augment_batch(images, key, flip: bool = True, shift: float = 0.1, rotate: float = 0.05, zoom: float = 0.1):
    """Stateless augmentation of a (B, H, W, 1) float batch, keyed by ``key`` (two int64s).

    Horizontal flip (as the seed did), then one affine warp per face combining a shift of up to
    ``shift`` of the size, a rotation of up to ``rotate`` turns (0.05 = 18 degrees) and a zoom of up
    to ``zoom``; borders repeat the nearest pixel. The same ranges as Keras's RandomTranslation,
    RandomRotation and RandomZoom, in one fused warp instead of four layers.
    """
    import math

    import tensorflow as tf

    n = tf.shape(images)[0]
    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), 5)
    if flip:
        flipped = tf.random.stateless_uniform([n], seeds[0]) < 0.5
        images = tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)
    theta = tf.random.stateless_uniform([n], seeds[1], -rotate, rotate) * 2.0 * math.pi
    scale = 1.0 / (1.0 + tf.random.stateless_uniform([n], seeds[2], -zoom, zoom))
    tx = tf.random.stateless_uniform([n], seeds[3], -shift, shift) * w
    ty = tf.random.stateless_uniform([n], seeds[4], -shift, shift) * h
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    a0, a1 = scale * tf.cos(theta), -scale * tf.sin(theta)
    b0, b1 = scale * tf.sin(theta), scale * tf.cos(theta)
    a2 = cx - a0 * cx - a1 * cy - tx
    b2 = cy - b0 * cx - b1 * cy - ty
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
