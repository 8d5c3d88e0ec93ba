"""Training data: face crops packed once into a uint8 array cache, fed through ``tf.data``.

:func:`preprocess_face` is the one function that turns a grayscale face crop into model input;
training, evaluation and the realtime client all call it, so they cannot drift apart.
Pixel scaling to [0, 1] happens inside the model (a ``Rescaling`` layer), never here.
"""

from __future__ import annotations

import functools
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

    _require_uint8(x)
    steps = -(-len(x) // batch_size)

    def batch(i):
        rows = slice(int(i) * batch_size, (int(i) + 1) * batch_size)
        return x[rows], y[rows].astype(np.int32)

    return _batches(tf.data.Dataset.range(steps), batch, x.shape[1:])


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The sample indices of one epoch, as a (steps, batch) array; a function of (seed, epoch) only."""
    batch_size = min(batch_size, n)
    steps = n // batch_size
    return np.random.default_rng([seed, epoch]).permutation(n)[: steps * batch_size].reshape(steps, batch_size)


def make_train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    first_epoch: int,
    epochs: int,
    crop: int | None = None,
    erase: float = 0.0,
    mixup: float = 0.0,
    n_classes: int | None = None,
    augment: float = 1.0,
):
    """Training batches for epochs ``first_epoch .. epochs-1``; returns ``(dataset, steps_per_epoch)``.

    Each epoch's shuffle and each batch's augmentation are functions of ``(seed, epoch, step)``
    alone, never of a random state that lives in the process, so a training resumed at epoch
    ``k`` in a new process sees exactly the batches an uninterrupted one would have. With
    ``crop`` each face is a ``crop`` x ``crop`` window of the augmented face, and with ``erase`` a
    share of the faces has a random rectangle replaced by noise (see :func:`augment_faces`). With
    ``mixup`` (the Beta distribution's alpha) each batch is blended with a shuffled copy of itself
    (:func:`mix_batch`) and its labels are float32 (batch, ``n_classes``) targets. ``augment``
    scales the ranges of the shift, rotation and zoom (:func:`augment_faces`' defaults at 1, flips
    only at 0); it scales the same draws, so each face moves the same way, further or less far.
    """
    import tensorflow as tf

    _require_uint8(x)
    if mixup and not n_classes:
        raise ValueError("mixup needs n_classes, the width of its blended targets")
    steps = epoch_order(len(x), batch_size, seed, first_epoch).shape[0] if epochs > first_epoch else 0
    order = functools.lru_cache(maxsize=2)(lambda epoch: epoch_order(len(x), batch_size, seed, epoch))

    def batch(i):
        epoch, step = divmod(int(i), steps)
        epoch += first_epoch
        idx = order(epoch)[step]
        rng = np.random.default_rng([seed, epoch, step])
        faces = augment_faces(x[idx], rng, crop=crop, erase=erase, **warp_ranges(augment))
        if mixup:  # its draws come after the augmentation's: mixup=0 leaves the batches as they were
            return mix_batch(faces, y[idx], n_classes, mixup, rng)
        return faces, y[idx].astype(np.int32)

    shape = (crop, crop) if crop else x.shape[1:]
    indices = tf.data.Dataset.range(steps * max(0, epochs - first_epoch))
    return _batches(indices, batch, shape, n_classes if mixup else None), steps


#: The ranges of :func:`augment_faces`' warp at augmentation strength 1.
WARP_RANGES = {"shift": 0.1, "rotate": 0.05, "zoom": 0.1}


def warp_ranges(strength: float) -> dict[str, float]:
    """:data:`WARP_RANGES` scaled by ``strength`` (0: no shift, rotation or zoom)."""
    return {name: value * strength for name, value in WARP_RANGES.items()}


def mix_batch(
    faces: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al. 2018) of a (B, H, W) uint8 batch: one weight ``lam`` drawn from
    Beta(alpha, alpha) blends every face with another face of the batch (a random permutation), and
    the one-hot labels alike; returns the blended faces (uint8, rounded) and (B, ``n_classes``)
    float32 targets. A regulariser against label noise; off in every preset (README run J: 1.7
    points lower on FER2013's public_test at 71 epochs)."""
    lam = float(rng.beta(alpha, alpha))
    other = rng.permutation(len(faces))
    mixed = np.rint(lam * faces + (1.0 - lam) * faces[other]).astype(np.uint8)
    eye = np.eye(n_classes, dtype=np.float32)
    return mixed, (lam * eye[labels] + (1.0 - lam) * eye[labels[other]]).astype(np.float32)


def _require_uint8(x: np.ndarray) -> None:
    if x.dtype != np.uint8 or x.ndim != 3:
        raise TypeError(f"packed faces must be a (N, H, W) uint8 array, got {x.dtype} {x.shape}")


def _batches(indices, make_batch, face_shape: tuple[int, ...], target_width: int | None = None):
    """Map batch numbers to ``(faces, labels)`` batches built by ``make_batch`` in numpy (OpenCV
    releases the GIL, so batches are built in parallel while the model trains), in order. Labels
    are int32 class numbers, or float32 (batch, ``target_width``) targets when that is given."""
    import tensorflow as tf

    label_type, label_shape = (tf.float32, (None, target_width)) if target_width else (tf.int32, (None,))

    def as_tensors(i):
        faces, labels = tf.numpy_function(make_batch, [i], (tf.uint8, label_type), stateful=False)
        faces.set_shape((None, *face_shape))
        labels.set_shape(label_shape)
        return tf.cast(faces, tf.float32)[..., tf.newaxis], labels

    ds = indices.map(as_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_faces(
    faces: np.ndarray,
    rng: np.random.Generator,
    flip: bool = True,
    shift: float = 0.1,
    rotate: float = 0.05,
    zoom: float = 0.1,
    crop: int | None = None,
    erase: float = 0.0,
) -> np.ndarray:
    """An augmented copy of a (B, H, W) uint8 batch, drawn from ``rng``; (B, crop, crop) with ``crop``.

    Per face: a horizontal flip with probability 1/2 (as the seed did) and one affine warp combining
    a shift of up to ``shift`` of the size, a rotation of up to ``rotate`` turns (0.05 = 18 degrees)
    and a zoom of up to ``zoom``; borders repeat the nearest pixel. The ranges of Keras's
    RandomFlip, RandomTranslation, RandomRotation and RandomZoom, fused into one OpenCV warp (about
    12 us a face, several times cheaper than TensorFlow's image transform op on a CPU).
    With ``crop`` the warp writes only the central ``crop`` x ``crop`` window of that result (at the
    face's own scale), so a model trained on it costs ``(crop / size)**2`` per face and sees the
    face at the scale it is shown at inference, where it gets the whole face.
    With ``erase``, that share of the faces then has one random rectangle replaced by noise
    (:func:`erase_rectangles`); the draws for it come after the warps', so ``erase=0`` gives the
    batches it gave before the option existed.
    """
    n, h, w = faces.shape
    oh, ow = (crop, crop) if crop else (h, w)
    out = np.empty((n, oh, ow), np.uint8)
    for i, matrix in enumerate(augment_matrices(rng, n, h, w, flip, shift, rotate, zoom, out_size=(oh, ow))):
        cv2.warpAffine(
            faces[i],
            matrix,
            (ow, oh),
            dst=out[i],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    if erase:
        erase_rectangles(out, rng, erase)
    return out


def erase_rectangles(
    faces: np.ndarray,
    rng: np.random.Generator,
    share: float,
    area: tuple[float, float] = (0.02, 0.25),
    aspect: tuple[float, float] = (0.3, 3.3),
) -> None:
    """Random erasing (Zhong et al. 2017), in place on a (B, H, W) uint8 batch: each face with
    probability ``share`` gets one rectangle of ``area`` (a share of the face) and ``aspect``
    (height / width, log-uniform) at a random place, filled with uniform noise. Occluded mouths,
    eyes and brows make the network use the whole face."""
    n, h, w = faces.shape
    chosen = rng.random(n) < share
    areas = rng.uniform(*area, n) * h * w
    ratios = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]), n))
    heights = np.clip(np.rint(np.sqrt(areas * ratios)), 1, h).astype(int)
    widths = np.clip(np.rint(np.sqrt(areas / ratios)), 1, w).astype(int)
    tops, lefts = rng.random(n), rng.random(n)
    for i in np.flatnonzero(chosen):
        top, left = int(tops[i] * (h - heights[i] + 1)), int(lefts[i] * (w - widths[i] + 1))
        faces[i, top : top + heights[i], left : left + widths[i]] = rng.integers(
            0, 256, (heights[i], widths[i]), dtype=np.uint8
        )


def augment_matrices(
    rng: np.random.Generator,
    n: int,
    h: int,
    w: int,
    flip: bool,
    shift: float,
    rotate: float,
    zoom: float,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """(n, 2, 3) affine maps from output to input pixel coordinates: flip, rotate and zoom about
    the centre, then shift; an output of ``out_size`` (h, w) is centred on the input's centre."""
    theta = rng.uniform(-rotate, rotate, n) * 2.0 * np.pi
    scale = 1.0 / (1.0 + rng.uniform(-zoom, zoom, n))
    tx, ty = rng.uniform(-shift, shift, n) * w, rng.uniform(-shift, shift, n) * h
    mirror = np.where(rng.random(n) < 0.5, -1.0, 1.0) if flip else np.ones(n)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    oh, ow = out_size or (h, w)
    ox, oy = (ow - 1) / 2.0, (oh - 1) / 2.0
    m = np.empty((n, 2, 3))
    m[:, 0, 0], m[:, 0, 1] = scale * np.cos(theta) * mirror, -scale * np.sin(theta)
    m[:, 1, 0], m[:, 1, 1] = scale * np.sin(theta) * mirror, scale * np.cos(theta)
    m[:, 0, 2] = cx - m[:, 0, 0] * ox - m[:, 0, 1] * oy - tx
    m[:, 1, 2] = cy - m[:, 1, 0] * ox - m[:, 1, 1] * oy - ty
    return m
