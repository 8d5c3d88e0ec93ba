"""Emotion characters: small cartoon faces drawn by the project's code, one per emotion label.

Known emotion words (the reference dataset's seven, FER2013's seven and common synonyms) get a
matching expression and colour; any other label gets a neutral face in a colour derived from its
name, with its initial, so every model's label set has characters.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

#: Where a character's eyes (image-left, image-right) and mouth are, as fractions of its sprite's size.
CHARACTER_ANCHORS = np.float32([[0.33, 0.42], [0.67, 0.42], [0.5, 0.68]])


@dataclass(frozen=True)
class CharacterStyle:
    mouth_curve: float  # >0 smile, <0 frown
    mouth_open: float  # 0..1
    brow_tilt: float  # >0 worried (inner ends up), <0 angry
    eye_open: float  # 0.3..1.3
    color: tuple[int, int, int]  # BGR
    extra: str = ""  # "tear", "blush", "sweat", "steam"


_STYLES = {
    "pleasure": CharacterStyle(0.9, 0.4, 0.0, 0.6, (60, 210, 255), "blush"),
    "upset": CharacterStyle(-0.1, 0.6, 0.3, 1.3, (120, 200, 255), "sweat"),
    "anger": CharacterStyle(-0.5, 0.1, -0.8, 0.7, (60, 60, 230), "steam"),
    "unrest": CharacterStyle(-0.3, 0.2, 0.6, 1.2, (200, 200, 120), "sweat"),
    "wound": CharacterStyle(-0.6, 0.0, 0.8, 0.5, (190, 150, 200), "tear"),
    "sadness": CharacterStyle(-0.9, 0.1, 0.5, 0.7, (230, 160, 90), "tear"),
    "neutrality": CharacterStyle(0.0, 0.0, 0.0, 1.0, (190, 190, 190)),
    "disgust": CharacterStyle(-0.4, 0.2, -0.3, 0.6, (80, 180, 120)),
    "fear": CharacterStyle(-0.3, 0.7, 0.7, 1.3, (220, 200, 160), "sweat"),
    "surprise": CharacterStyle(0.0, 1.0, 0.4, 1.3, (120, 230, 250)),
}
_SYNONYMS = {
    "happy": "pleasure",
    "happiness": "pleasure",
    "joy": "pleasure",
    "기쁨": "pleasure",
    "angry": "anger",
    "분노": "anger",
    "sad": "sadness",
    "슬픔": "sadness",
    "neutral": "neutrality",
    "중립": "neutrality",
    "surprised": "surprise",
    "embarrassed": "upset",
    "당황": "upset",
    "anxiety": "unrest",
    "anxious": "unrest",
    "불안": "unrest",
    "hurt": "wound",
    "상처": "wound",
    "disgusted": "disgust",
    "afraid": "fear",
    "scared": "fear",
}


def style_for(label: str) -> CharacterStyle:
    """The character style of a label (a neutral face in a name-derived colour when unknown)."""
    key = label.strip().lower()
    key = _SYNONYMS.get(key, key)
    if key in _STYLES:
        return _STYLES[key]
    digest = hashlib.sha256(key.encode()).digest()
    return CharacterStyle(0.0, 0.0, 0.0, 1.0, (64 + digest[0] % 160, 64 + digest[1] % 160, 64 + digest[2] % 160))


@lru_cache(maxsize=64)
def render_character(label: str, size: int = 128) -> np.ndarray:
    """A BGRA sprite of the label's character, ``size`` pixels square, transparent outside."""
    st = style_for(label)
    s = size
    img = np.zeros((s, s, 4), np.uint8)
    c, r = (s // 2, s // 2), int(s * 0.46)
    color = (*st.color, 255)
    cv2.circle(img, c, r, color, -1, cv2.LINE_AA)
    cv2.circle(img, c, r, (40, 40, 40, 255), max(1, s // 40), cv2.LINE_AA)
    ink = (30, 30, 30, 255)
    (left_x, eye_y), _, (_, mouth_y) = CHARACTER_ANCHORS
    for side in (-1, 1):
        ex, ey = int(s / 2 + side * s * (0.5 - left_x)), int(s * eye_y)
        eh = max(1, int(s * 0.07 * st.eye_open))
        cv2.ellipse(img, (ex, ey), (int(s * 0.07), eh), 0, 0, 360, (255, 255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(img, (ex, ey), max(1, min(eh, int(s * 0.04))), ink, -1, cv2.LINE_AA)
        by, tilt = int(s * 0.28 - s * 0.02 * st.eye_open), st.brow_tilt
        inner = (int(s / 2 + side * s * 0.08), int(by - s * 0.05 * tilt))
        outer = (int(s / 2 + side * s * 0.27), int(by + s * 0.03 * tilt))
        cv2.line(img, inner, outer, ink, max(2, s // 28), cv2.LINE_AA)
    half, my = s * 0.17, s * mouth_y
    xs = np.linspace(-half, half, 20)
    curve = st.mouth_curve * s * 0.08
    upper = my + curve * (1 - (xs / half) ** 2) - curve * 0.5
    top = np.stack([s / 2 + xs, upper], 1).astype(np.int32)
    if st.mouth_open > 0.05:
        lower = upper + st.mouth_open * s * 0.12 * (1 - (xs / half) ** 2)
        bottom = np.stack([s / 2 + xs[::-1], lower[::-1]], 1).astype(np.int32)
        cv2.fillPoly(img, [np.vstack([top, bottom])], (40, 20, 120, 255), cv2.LINE_AA)
    cv2.polylines(img, [top], False, ink, max(2, s // 28), cv2.LINE_AA)
    if st.extra == "tear":
        cv2.ellipse(
            img,
            (int(s * 0.33), int(s * 0.58)),
            (max(1, s // 28), max(2, s // 14)),
            0,
            0,
            360,
            (255, 200, 120, 255),
            -1,
            cv2.LINE_AA,
        )
    elif st.extra == "blush":
        for side in (-1, 1):
            cv2.ellipse(
                img,
                (int(s / 2 + side * s * 0.27), int(s * 0.58)),
                (s // 12, s // 24),
                0,
                0,
                360,
                (150, 150, 255, 255),
                -1,
                cv2.LINE_AA,
            )
    elif st.extra == "sweat":
        cv2.ellipse(
            img,
            (int(s * 0.8), int(s * 0.3)),
            (max(1, s // 30), max(2, s // 16)),
            0,
            0,
            360,
            (255, 220, 160, 255),
            -1,
            cv2.LINE_AA,
        )
    elif st.extra == "steam":
        for k in range(3):
            x = int(s * (0.72 + 0.08 * k))
            cv2.line(img, (x, int(s * 0.08)), (x + s // 20, int(s * 0.2)), (200, 200, 200, 255), max(1, s // 40))
    if label.strip().lower() not in _STYLES and _SYNONYMS.get(label.strip().lower()) is None:
        cv2.putText(
            img,
            label[:1].upper(),
            (int(s * 0.42), int(s * 0.95)),
            cv2.FONT_HERSHEY_SIMPLEX,
            s / 160,
            ink,
            max(1, s // 60),
            cv2.LINE_AA,
        )
    return img


def overlay(frame: np.ndarray, sprite: np.ndarray, center: tuple[float, float], size: int, angle: float = 0.0) -> None:
    """Alpha-blend ``sprite`` onto a BGR ``frame`` in place, scaled to ``size`` and rotated by ``angle`` degrees."""
    if size < 4:
        return
    sprite = cv2.resize(sprite, (size, size), interpolation=cv2.INTER_AREA)
    if abs(angle) > 0.5:
        m = cv2.getRotationMatrix2D((size / 2, size / 2), -angle, 1.0)
        sprite = cv2.warpAffine(sprite, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    x0, y0 = int(round(center[0] - size / 2)), int(round(center[1] - size / 2))
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(frame.shape[1], x0 + size), min(frame.shape[0], y0 + size)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    _blend(frame, sprite[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0], fx0, fy0)


def overlay_anchored(frame: np.ndarray, sprite: np.ndarray, targets: np.ndarray) -> None:
    """Alpha-blend ``sprite`` onto ``frame`` with its eyes and mouth moved onto ``targets`` (3x2 pixel
    positions of the image-left eye, image-right eye and mouth, as :func:`emotion_core.landmarks.anchors`
    gives them): one affine warp, so the character tilts, turns and stretches with the face."""
    size = sprite.shape[0]
    m = cv2.getAffineTransform(CHARACTER_ANCHORS * size, np.asarray(targets, np.float32))
    corners = cv2.transform(np.float32([[[0, 0]], [[size, 0]], [[0, size]], [[size, size]]]), m).reshape(-1, 2)
    fx0, fy0 = np.maximum(np.floor(corners.min(0)).astype(int), 0)
    fx1 = min(frame.shape[1], int(np.ceil(corners[:, 0].max())))
    fy1 = min(frame.shape[0], int(np.ceil(corners[:, 1].max())))
    if fx1 <= fx0 or fy1 <= fy0:
        return
    m[:, 2] -= (fx0, fy0)
    warped = cv2.warpAffine(sprite, m, (fx1 - fx0, fy1 - fy0), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))
    _blend(frame, warped, fx0, fy0)


def draw_landmarks(frame: np.ndarray, points: np.ndarray, color: tuple[int, int, int]) -> None:
    """Draw 68 landmark points as small dots."""
    radius = max(1, int(round(np.ptp(points[:, 0]) / 90)))
    for x, y in points.astype(int):
        cv2.circle(frame, (int(x), int(y)), radius, color, -1, cv2.LINE_AA)


def _blend(frame: np.ndarray, part: np.ndarray, x: int, y: int) -> None:
    """Alpha-blend a BGRA ``part`` onto ``frame`` with its top-left corner at (x, y), in place."""
    alpha = part[:, :, 3:4].astype(np.float32) / 255
    region = frame[y : y + part.shape[0], x : x + part.shape[1]]
    region[:] = (region * (1 - alpha) + part[:, :, :3] * alpha).astype(np.uint8)


def eye_angle(gray_face: np.ndarray, eye_cascade: cv2.CascadeClassifier) -> float | None:
    """In-plane tilt (degrees) from the two eyes found in the upper half of a face crop, else None."""
    h = gray_face.shape[0]
    upper = gray_face[: h // 2]
    eyes = eye_cascade.detectMultiScale(upper, 1.1, 5, minSize=(max(8, h // 10), max(8, h // 10)))
    if len(eyes) < 2:
        return None
    eyes = sorted(eyes, key=lambda e: e[2] * e[3], reverse=True)[:2]
    (x1, y1, w1, h1), (x2, y2, w2, h2) = sorted(eyes, key=lambda e: e[0])
    dx = (x2 + w2 / 2) - (x1 + w1 / 2)
    dy = (y2 + h2 / 2) - (y1 + h1 / 2)
    if dx <= 0:
        return None
    angle = math.degrees(math.atan2(dy, dx))
    return angle if abs(angle) < 35 else None
