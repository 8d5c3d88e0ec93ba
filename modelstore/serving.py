"""The MLflow ``python_function`` face of every model this project logs: images in, emotions out.

``mlflow.pyfunc.load_model(uri).predict(df)`` and ``mlflow models serve`` take a DataFrame whose
``image`` column holds, per row, encoded image bytes (JPEG, PNG, ... as ``bytes``, or base64 text,
which is what a JSON request carries) or a decoded array (gray ``(H, W)`` or BGR ``(H, W, 3)``
uint8). A row may be a face crop or a whole photo: with ``face_mode`` ``auto`` (the default) an
image at most 96 px on both sides is the face, a larger one is searched with the crop stage's
detector and its largest face is labelled. Per row the answer is the label, its probability, the
probability of every label, the face box ``[x, y, w, h]`` in the image's pixels and how the face
was found (``whole``, ``detected`` or ``none``: no face, label null).

The face goes through the crop stage's :func:`~emotion_core.faces.locate_faces` and
:func:`~emotion_core.faces.cut_face`, then :func:`~emotion_core.dataset.preprocess_face`, the one
preprocessing of training, evaluation and the realtime client. Input that is not an image, is
empty, too large or declares too many pixels is refused with an ``MlflowException`` naming the
row, which the scoring server answers with HTTP 400 and the reason.

MLflow loads this module by name (``loader_module``), so serving needs this package installed
(``mlflow models serve --env-manager local`` in the project's environment); no pickle is involved.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import numpy as np
import pandas as pd

from emotion_core.dataset import as_batch, preprocess_face
from emotion_core.evaluate import predict_probs
from emotion_core.faces import FACE_MODES, cut_face, locate_faces
from emotion_core.imageio import ImageError, decode

INPUT_COLUMN = "image"
MAX_IMAGE_BYTES = 8 * 2**20  # one encoded image; a 24 MP phone JPEG is 5-8 MB
MAX_PIXELS = 50_000_000  # declared or decoded; refuses decompression bombs before decoding
OUTPUT_COLUMNS = ("label", "confidence", "probabilities", "box", "face")


def signature():
    """The model signature every logged model carries: what to send and what comes back."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label", required=False),
                ColSpec(DataType.double, "confidence", required=False),
                ColSpec(Map(DataType.double), "probabilities", required=False),
                ColSpec(Array(DataType.long), "box", required=False),
                ColSpec(DataType.string, "face"),
            ]
        ),
        params=ParamSchema([ParamSpec("face_mode", DataType.string, "auto")]),
    )


def input_example(face: np.ndarray):
    """A one-row input (a face as PNG bytes) for the logged model's example."""
    from emotion_core.imageio import encode_png

    return pd.DataFrame({INPUT_COLUMN: [encode_png(face)]})


class BadInput(ValueError):
    """A request row that is not a usable image."""


def _invalid(message: str) -> Exception:
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return BadInput(message)
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def to_gray(value) -> np.ndarray:
    """One input value (bytes, base64 text or an array) as a grayscale uint8 image."""
    import cv2

    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3)):
            raise BadInput(f"an array must be uint8 (H, W) or (H, W, 3), got {value.dtype} {value.shape}")
        if value.size == 0 or value.shape[0] * value.shape[1] > MAX_PIXELS:
            raise BadInput(f"an array of shape {value.shape} is empty or over {MAX_PIXELS:,} pixels")
        if value.ndim == 3:
            return cv2.cvtColor(value, cv2.COLOR_BGR2GRAY) if value.shape[2] == 3 else value[..., 0]
        return value
    if isinstance(value, str):
        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise BadInput(_too_big(len(value) * 3 // 4))
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput("text is not base64-encoded image bytes") from None
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        raise BadInput(f"expected image bytes, base64 text or a uint8 array, got {type(value).__name__}")
    if not value:
        raise BadInput("empty image data (nothing left after base64 decoding?)")
    if len(value) > MAX_IMAGE_BYTES:
        raise BadInput(_too_big(len(value)))
    try:
        return decode(value, mode="gray", max_pixels=MAX_PIXELS)
    except ImageError as exc:
        raise BadInput(exc.reason) from None


def _too_big(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.1f} MB is over the {MAX_IMAGE_BYTES // 2**20} MB limit for one image"


def _values(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN in model_input.columns:
            return list(model_input[INPUT_COLUMN])
        if len(model_input.columns) == 1:
            return list(model_input.iloc[:, 0])
        raise _invalid(f"the input needs an {INPUT_COLUMN!r} column, got columns {list(model_input.columns)}")
    if isinstance(model_input, dict) and INPUT_COLUMN in model_input:
        return list(model_input[INPUT_COLUMN])
    if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8 and model_input.ndim in (2, 3):
        return [model_input] if model_input.ndim == 2 or model_input.shape[-1] == 3 else list(model_input)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    return [model_input]


class FaceEmotionModel:
    """A loaded Keras emotion model with its label set, predicting from images (see the module)."""

    def __init__(self, model, labels: tuple[str, ...], input_size: int):
        self.model, self.labels, self.input_size = model, tuple(labels), int(input_size)

    def predict(self, model_input, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row: label, confidence, probabilities, box, face."""
        face_mode = str((params or {}).get("face_mode") or "auto")
        if face_mode not in FACE_MODES:
            raise _invalid(f"face_mode must be one of {', '.join(FACE_MODES)}, got {face_mode!r}")
        values = _values(model_input)
        if not values:
            raise _invalid("the input has no rows")
        faces, boxes, how = [], [], []
        for row, value in enumerate(values):
            try:
                gray = to_gray(value)
            except BadInput as exc:
                raise _invalid(f"row {row}: {exc}") from None
            found, n_detected, _ = locate_faces(gray, face_mode, "largest")
            box = found[0] if found else None
            boxes.append(box)
            how.append("none" if box is None else "whole" if n_detected is None else "detected")
            faces.append(preprocess_face(cut_face(gray, box), self.input_size) if box else None)
        present = [i for i, f in enumerate(faces) if f is not None]
        probs = predict_probs(self.model, as_batch([faces[i] for i in present])) if present else []
        by_row = dict(zip(present, probs, strict=True))
        rows = []
        for i, box in enumerate(boxes):
            if box is None:
                rows.append({"label": None, "confidence": None, "probabilities": None, "box": None, "face": "none"})
                continue
            p = by_row[i]
            rows.append(
                {
                    "label": self.labels[int(np.argmax(p))],
                    "confidence": float(np.max(p)),
                    "probabilities": {label: float(v) for label, v in zip(self.labels, p, strict=True)},
                    "box": [int(v) for v in box],
                    "face": how[i],
                }
            )
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def load(model_dir: str | Path) -> FaceEmotionModel:
    """The pyfunc model of an MLflow model folder this project wrote (Keras safe mode, no pickle)."""
    import keras
    import yaml

    root = Path(model_dir)
    while not (root / "MLmodel").is_file() and root != root.parent:
        root = root.parent
    meta = (yaml.safe_load((root / "MLmodel").read_text()) or {}).get("metadata") or {}
    files = sorted(root.rglob("*.keras"))
    if not files or not meta.get("labels"):
        raise _invalid(f"{root} is not an emotion model logged by this project (no .keras file or label set)")
    model = keras.saving.load_model(files[0], compile=False, safe_mode=True)
    return FaceEmotionModel(model, tuple(meta["labels"]), int(meta.get("input_size") or model.input_shape[1]))


def _load_pyfunc(data_path: str) -> FaceEmotionModel:
    """MLflow's entry point for ``loader_module``: ``data_path`` is the model's ``data`` folder."""
    return load(data_path)
