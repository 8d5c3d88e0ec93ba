"""Optional 68-point face landmarks (the ``[landmarks]`` extra: ``dlib-bin`` and the shape predictor
shipped by the ``face-recognition-models`` package; nothing is downloaded at run time).

Points follow the iBUG 300-W numbering: jaw 0-16, brows 17-26, nose 27-35, the eye on the image's
left 36-41, the other eye 42-47, mouth 48-67.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

EXTRA_HINT = "pip install '.[landmarks]'"
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


class LandmarksUnavailable(RuntimeError):
    """The optional extra is not installed (or its model file is missing)."""


def predictor_path() -> Path | None:
    """The 68-point predictor that ``face-recognition-models`` ships, without importing that package
    (its ``__init__`` needs ``pkg_resources``, which recent setuptools no longer provide)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PREDICTOR_FILE
    return path if path.is_file() else None


class LandmarkDetector:
    """Fits the 68 points inside a face box found by the project's (Haar) detector.

    dlib's predictor was trained on boxes of dlib's own HOG detector, which are smaller and lower
    than Haar's; measured on 160 Yale faces, the eye and mouth centres fitted in the Haar box are
    within 0.4% (median) and 1.2% (p95) of the face width of those fitted in dlib's own box, so the
    Haar box is used as it is.
    """

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as exc:
            raise LandmarksUnavailable(f"landmarks need the optional extra ({EXTRA_HINT}): no dlib") from exc
        path = predictor_path()
        if path is None:
            raise LandmarksUnavailable(
                f"landmarks need the optional extra ({EXTRA_HINT}): no {PREDICTOR_FILE} (face-recognition-models)"
            )
        self._dlib = dlib
        self._predict = dlib.shape_predictor(str(path))

    def fit(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """The 68 (x, y) points, float32 (68, 2) in ``gray``'s pixels, of the face in ``box`` (x, y, w, h)."""
        x, y, w, h = (int(round(float(v))) for v in box)
        shape = self._predict(np.ascontiguousarray(gray, dtype=np.uint8), self._dlib.rectangle(x, y, x + w, y + h))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def load_landmarks() -> tuple[LandmarkDetector | None, str | None]:
    """A detector, or None and the one-line reason it is unavailable."""
    try:
        return LandmarkDetector(), None
    except LandmarksUnavailable as exc:
        return None, str(exc)


def anchors(points: np.ndarray) -> np.ndarray:
    """Centres of the image-left eye, the image-right eye and the mouth: float32 (3, 2)."""
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[48:68].mean(0)]).astype(np.float32)


def roll_degrees(points: np.ndarray) -> float:
    """In-plane tilt of the face, from the line through the eye centres (clockwise positive)."""
    left, right, _ = anchors(points)
    return float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
