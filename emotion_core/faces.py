"""Stage 2: face detection (OpenCV Haar cascade) and grayscale face crops.

The detector is built once per worker thread and reused; detection runs on a copy reduced to a
working size and the boxes are mapped back to full resolution, where the crop is cut.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import cv2
import numpy as np

from .imageio import DEFAULT_MAX_PIXELS, ImageError, atomic_write, decode, encode_png, read_bytes

FACE_MODES = ("detect", "whole", "auto")
MULTI_FACE_POLICIES = ("largest", "all", "skip")
#: In ``auto`` mode an image whose sides are both at most this many pixels is taken as a face crop.
AUTO_WHOLE_MAX_SIDE = 96


@dataclass(frozen=True)
class DetectorConfig:
    """Haar cascade parameters. Defaults are the seed's (``alt2``, 1.2, 4) plus a working size."""

    cascade: str = "haarcascade_frontalface_alt2.xml"
    scale_factor: float = 1.2
    min_neighbors: int = 4
    working_size: int = 320  # longest side of the reduced copy detection runs on (0: full size)
    min_face_frac: float = 0.12  # smallest face, as a fraction of the working copy's shorter side
    min_face_px: int = 20


Box = tuple[int, int, int, int]  # x, y, w, h in full-resolution pixels


class FaceDetector:
    """A loaded Haar cascade plus the reduce-detect-map-back logic."""

    def __init__(self, config: DetectorConfig = DetectorConfig()):
        self.config = config
        path = Path(config.cascade)
        if not path.is_file():
            path = Path(cv2.data.haarcascades) / config.cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ValueError(f"cannot load Haar cascade {config.cascade!r} (looked in {path.parent})")

    def detect(self, gray: np.ndarray) -> list[Box]:
        """Faces in a grayscale image, largest first, as full-resolution boxes."""
        cfg = self.config
        h, w = gray.shape[:2]
        scale = 1.0
        if cfg.working_size and max(h, w) > cfg.working_size:
            scale = cfg.working_size / max(h, w)
            small = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        else:
            small = gray
        min_side = max(cfg.min_face_px, int(min(small.shape[:2]) * cfg.min_face_frac))
        found = self._cascade.detectMultiScale(
            small, scaleFactor=cfg.scale_factor, minNeighbors=cfg.min_neighbors, minSize=(min_side, min_side)
        )
        boxes = [_map_back(tuple(int(v) for v in box), scale, w, h) for box in found]
        return sorted(boxes, key=lambda b: (-b[2] * b[3], b[0], b[1]))


def _map_back(box: Box, scale: float, width: int, height: int) -> Box:
    x, y, bw, bh = (round(v / scale) for v in box)
    x, y = max(0, min(x, width - 1)), max(0, min(y, height - 1))
    return x, y, max(1, min(bw, width - x)), max(1, min(bh, height - y))


_local = threading.local()


def get_detector(config: DetectorConfig = DetectorConfig()) -> FaceDetector:
    """The calling thread's detector for ``config``, built on first use (cascades are not thread-safe)."""
    cache = getattr(_local, "detectors", None)
    if cache is None:
        cache = _local.detectors = {}
    if config not in cache:
        cache[config] = FaceDetector(config)
    return cache[config]


@dataclass
class CropResult:
    """One face row: the box in the compressed image and the crop written, or a failure."""

    compressed_path: str
    face_index: int
    face_path: str | None
    face_x: int | None
    face_y: int | None
    face_w: int | None
    face_h: int | None
    faces_found: int | None
    status: str
    reason: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def face_name(compressed_rel: str, index: int = 0) -> str:
    """Crop path, relative to ``faces/``, for face ``index`` of a compressed image."""
    stem = PurePosixPath(compressed_rel).with_suffix("").as_posix()
    return f"{stem}.png" if index == 0 else f"{stem}.face{index}.png"


def choose_faces(boxes: list[Box], policy: str) -> tuple[list[Box], str | None]:
    """Apply the multi-face policy; returns the boxes kept and a failure reason if none."""
    if not boxes:
        return [], "no face detected"
    if policy == "largest":
        return boxes[:1], None
    if policy == "all":
        return boxes, None
    if policy == "skip":
        return (boxes, None) if len(boxes) == 1 else ([], f"{len(boxes)} faces found; policy is skip")
    raise ValueError(f"unknown multi-face policy {policy!r}; choose one of {MULTI_FACE_POLICIES}")


def is_whole_face(shape: tuple[int, ...], face_mode: str) -> bool:
    """Whether an image of ``shape`` is taken as the face itself under ``face_mode``."""
    if face_mode not in FACE_MODES:
        raise ValueError(f"unknown face mode {face_mode!r}; choose one of {FACE_MODES}")
    return face_mode == "whole" or (face_mode == "auto" and max(shape[:2]) <= AUTO_WHOLE_MAX_SIDE)


def locate_faces(
    gray: np.ndarray, face_mode: str = "auto", policy: str = "largest", config: DetectorConfig = DetectorConfig()
) -> tuple[list[Box], int | None, str | None]:
    """The face boxes the crop stage keeps in a grayscale image: ``(boxes, faces_found, reason)``.

    ``faces_found`` is None when the image is the face (``whole``); ``reason`` says why no box
    was kept. The crop stage and the served model both call this, so they find the same faces.
    """
    h, w = gray.shape[:2]
    if is_whole_face(gray.shape, face_mode):
        return [(0, 0, w, h)], None, None
    detected = get_detector(config).detect(gray)
    boxes, reason = choose_faces(detected, policy)
    return boxes, len(detected), reason


def cut_face(gray: np.ndarray, box: Box, max_side: int = 256) -> np.ndarray:
    """The crop of ``box``, reduced so that its longer side is at most ``max_side``."""
    x, y, bw, bh = box
    crop = gray[y : y + bh, x : x + bw]
    if max(bw, bh) > max_side:
        f = max_side / max(bw, bh)
        crop = cv2.resize(crop, (max(1, round(bw * f)), max(1, round(bh * f))), interpolation=cv2.INTER_AREA)
    return crop


def crop_file(
    data_root: Path,
    compressed_rel: str,
    faces_root: Path,
    *,
    face_mode: str = "detect",
    policy: str = "largest",
    config: DetectorConfig = DetectorConfig(),
    max_face_side: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[CropResult]:
    """Find the face(s) in one compressed image and write grayscale crops under ``faces_root``.

    ``data_root / compressed_rel`` is decoded once, in grayscale. ``face_mode`` is ``detect``
    (Haar cascade), ``whole`` (the image is the face, for pre-cropped sets such as FER2013) or
    ``auto`` (``whole`` for images at most :data:`AUTO_WHOLE_MAX_SIDE` px on both sides, else
    ``detect``). Crops larger than ``max_face_side`` are reduced to it. Problems become a result
    row with a failure status.
    """
    if face_mode not in FACE_MODES:
        raise ValueError(f"unknown face mode {face_mode!r}; choose one of {FACE_MODES}")
    try:
        gray = decode(read_bytes(data_root / compressed_rel), mode="gray", max_pixels=max_pixels)
    except ImageError as exc:
        return [CropResult(compressed_rel, 0, None, None, None, None, None, None, exc.kind, exc.reason)]
    boxes, found, reason = locate_faces(gray, face_mode, policy, config)
    if not boxes:
        status = "no_face" if found == 0 else "multiple_faces"
        return [CropResult(compressed_rel, 0, None, None, None, None, None, found, status, reason)]
    results = []
    for index, (x, y, bw, bh) in enumerate(boxes):
        crop = cut_face(gray, (x, y, bw, bh), max_face_side)
        rel = face_name(compressed_rel, index)
        try:
            atomic_write(faces_root / rel, encode_png(crop))
        except (OSError, ImageError) as exc:
            results.append(CropResult(compressed_rel, index, None, x, y, bw, bh, found, "write_failed", str(exc)))
            continue
        results.append(CropResult(compressed_rel, index, rel, x, y, bw, bh, found, "ok", None))
    return results
