"""Procedurally drawn demo faces: the project's own data for ``emotion demo`` and its tests.

Each face is drawn in grayscale from expression parameters (mouth curve and opening, brow angle
and height, eye opening) whose distribution differs by class, with random identity (head shape,
skin tone, hair), lighting, scale, position and background, so a detector has real work to do
and a classifier has something real to learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .labels import AIHUB_LABELS, KOREAN_TO_LABEL


@dataclass(frozen=True)
class Expression:
    """Mean expression parameters of a class (each sample adds noise)."""

    mouth_curve: float  # >0 smile, <0 frown (fraction of mouth width)
    mouth_open: float  # 0 closed .. 1 wide open
    mouth_width: float  # relative to the default width
    brow_tilt: float  # >0 inner ends raised (worry), <0 inner ends lowered (anger), radians
    brow_lift: float  # extra height above the eyes (fraction of head height)
    eye_open: float  # 0.3 narrowed .. 1.3 wide


#: The seven classes of the reference dataset, each with its own expression.
EXPRESSIONS: dict[str, Expression] = {
    "pleasure": Expression(0.30, 0.25, 1.15, 0.00, 0.00, 0.75),
    "upset": Expression(0.00, 0.70, 0.55, 0.15, 0.05, 1.30),
    "anger": Expression(-0.08, 0.05, 0.90, -0.45, -0.03, 0.65),
    "unrest": Expression(-0.05, 0.15, 0.75, 0.35, 0.03, 1.20),
    "wound": Expression(-0.18, 0.00, 0.85, 0.45, 0.01, 0.45),
    "sadness": Expression(-0.32, 0.05, 0.95, 0.25, 0.00, 0.80),
    "neutrality": Expression(0.00, 0.00, 1.00, 0.00, 0.00, 1.00),
}
assert tuple(EXPRESSIONS) == AIHUB_LABELS


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.normal(rng.uniform(70, 170), rng.uniform(15, 45), (max(2, h // 40), max(2, w // 40)))
    bg = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    bg += (np.cos(angle) * xx / w + np.sin(angle) * yy / h) * rng.uniform(-40, 40)
    return bg


def draw_face(
    canvas: np.ndarray,
    cx: float,
    cy: float,
    size: float,
    expr: Expression,
    rng: np.random.Generator,
    jitter: float = 1.0,
) -> tuple[int, int, int, int]:
    """Draw one face centred at (cx, cy), ``size`` px tall, on a float32 canvas; returns its box."""
    # work on the region around the head only (a view, so drawing lands on the canvas)
    x0, y0 = max(0, int(cx - 0.6 * size)), max(0, int(cy - 0.6 * size))
    x1, y1 = min(canvas.shape[1], int(cx + 0.6 * size) + 1), min(canvas.shape[0], int(cy + 0.6 * size) + 1)
    x, y, bw, bh = _draw_face(canvas[y0:y1, x0:x1], cx - x0, cy - y0, size, expr, rng, jitter)
    return x + x0, y + y0, bw, bh


def _draw_face(
    canvas: np.ndarray, cx: float, cy: float, size: float, expr: Expression, rng: np.random.Generator, jitter: float
) -> tuple[int, int, int, int]:
    h, w = canvas.shape
    s = size
    hw, hh = s * rng.uniform(0.36, 0.42), s * 0.5  # head half-width / half-height
    skin = rng.uniform(150, 215)
    face = np.zeros_like(canvas)
    mask = np.zeros((h, w), np.uint8)

    def p(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * s)), int(round(cy + y * s))

    def j(v: float, spread: float) -> float:
        return v + rng.normal(0, spread) * jitter

    # hair behind/around the top of the head, then the head itself
    hair = rng.uniform(20, 70)
    cv2.ellipse(canvas, p(0, -0.06), (int(hw * 1.08), int(hh * 1.02)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    cv2.ellipse(mask, p(0, 0), (int(hw), int(hh)), 0, 0, 360, 255, -1, cv2.LINE_AA)
    face[:] = skin
    # soft lighting across the face
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = rng.uniform(-1, 1)
    face += light * 35 * (xx - cx) / max(hw, 1)
    face -= 25 * np.clip((yy - cy) / hh, 0, None) ** 2  # darker chin and jaw
    fringe = rng.uniform(0.30, 0.42)
    cv2.ellipse(face, p(0, -0.5 + fringe / 2), (int(hw * 1.0), int(fringe * s * 0.55)), 0, 180, 360, hair, -1)

    eye_y, eye_dx = j(-0.07, 0.01), j(0.155, 0.008)
    eye_w = s * j(0.075, 0.004)
    eye_h = max(1.0, s * 0.040 * max(0.25, j(expr.eye_open, 0.12)))
    for side in (-1, 1):
        ex, ey = p(side * eye_dx, eye_y)
        # eye socket shadow, eye white, iris and pupil
        cv2.ellipse(face, (ex, ey - int(s * 0.01)), (int(eye_w * 1.5), int(s * 0.06)), 0, 0, 360, skin * 0.72, -1)
        cv2.ellipse(face, (ex, ey), (int(eye_w), int(eye_h)), 0, 0, 360, 225, -1, cv2.LINE_AA)
        r = int(min(eye_h, eye_w * 0.55))
        cv2.circle(face, (ex + int(rng.normal(0, 0.15) * eye_w), ey), max(r, 1), 45, -1, cv2.LINE_AA)
        cv2.ellipse(face, (ex, ey), (int(eye_w), int(eye_h)), 0, 180, 360, 35, max(1, int(s * 0.008)), cv2.LINE_AA)
        # brow: inner end (towards the nose) lifted by brow_tilt
        tilt = j(expr.brow_tilt, 0.08)
        by = eye_y - j(0.085 + expr.brow_lift, 0.008)
        inner = (side * (eye_dx - 0.075), by - 0.05 * math.sin(tilt))
        outer = (side * (eye_dx + 0.085), by + 0.02 * math.sin(tilt))
        cv2.line(face, p(*inner), p(*outer), rng.uniform(25, 60), max(2, int(s * 0.028)), cv2.LINE_AA)
    # nose: shaded bridge and nostrils
    nose_y = j(0.10, 0.01)
    cv2.line(face, p(-0.03, -0.02), p(-0.045, nose_y), skin * 0.85, max(1, int(s * 0.015)), cv2.LINE_AA)
    for side in (-1, 1):
        cv2.ellipse(
            face,
            p(side * 0.035, nose_y + 0.01),
            (max(1, int(s * 0.018)), max(1, int(s * 0.01))),
            0,
            0,
            360,
            skin * 0.45,
            -1,
            cv2.LINE_AA,
        )
    # mouth: a curve of given bend, opening dark inside
    mouth_y = j(0.235, 0.01)
    half = 0.11 * j(expr.mouth_width, 0.06)
    curve = j(expr.mouth_curve, 0.05) * half
    opening = max(0.0, j(expr.mouth_open, 0.08))
    xs = np.linspace(-half, half, 24)
    upper = mouth_y + curve * (1 - (xs / half) ** 2) - curve * 0.5  # image y grows downwards
    lower = upper + opening * 0.07 * (1 - (xs / half) ** 2)
    top = np.array([p(x, y) for x, y in zip(xs, upper, strict=True)], np.int32)
    if opening > 0.08:
        bottom = np.array([p(x, y) for x, y in zip(xs[::-1], lower[::-1], strict=True)], np.int32)
        cv2.fillPoly(face, [np.vstack([top, bottom])], 40, cv2.LINE_AA)
    cv2.polylines(face, [top], False, skin * 0.35, max(2, int(s * 0.02)), cv2.LINE_AA)

    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), max(1.0, s * 0.01))
    canvas[:] = canvas * (1 - alpha) + face * alpha
    x0, y0 = int(cx - hw), int(cy - hh)
    return max(0, x0), max(0, y0), int(2 * hw), int(2 * hh)


def render_face_photo(
    label: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (960, 1280),
    face_frac: tuple[float, float] = (0.3, 0.55),
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A grayscale photo (``size`` = (h, w)) of one face showing ``label``; returns the image and face box."""
    h, w = size
    canvas = _background(rng, h, w)
    face_h = rng.uniform(*face_frac) * h
    cx = rng.uniform(0.5 * face_h, w - 0.5 * face_h)
    cy = rng.uniform(0.55 * face_h, h - 0.55 * face_h)
    box = draw_face(canvas, cx, cy, face_h, EXPRESSIONS[label], rng)
    canvas += rng.normal(0, rng.uniform(2, 6), canvas.shape)
    canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.6, 1.4))
    return np.clip(canvas, 0, 255).astype(np.uint8), box


#: Korean folder names of the reference layout, by canonical label.
_FOLDER = {label: korean for korean, label in KOREAN_TO_LABEL.items()}


def demo_file(label: str, index: int, trial: int = 1) -> str:
    """Relative path of demo photo ``index`` of ``label`` in the AIHub layout with Korean folders."""
    return f"{_FOLDER[label]}_TRAIN_{trial}/demo face ({index + 1}).jpg"


def write_demo_dataset(
    root, per_class: int = 60, seed: int = 0, size: tuple[int, int] = (960, 1280), workers: int = 2
) -> dict[str, int]:
    """Write ``per_class`` photos of each of the seven classes under ``root`` (existing files are kept).

    Photo ``i`` of a class is drawn from its own seed, so the dataset is identical on every run and
    an interrupted generation simply continues. Returns the number of photos written now per class.
    """
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from .imageio import atomic_write, encode_jpeg

    root = Path(root)
    jobs = [(label, i) for label in EXPRESSIONS for i in range(per_class) if not (root / demo_file(label, i)).is_file()]

    def make(job: tuple[str, int]) -> str:
        label, i = job
        rng = np.random.default_rng([seed, AIHUB_LABELS.index(label), i])
        img, _ = render_face_photo(label, rng, size=size)
        atomic_write(root / demo_file(label, i), encode_jpeg(img, 92))
        return label

    written = {label: 0 for label in EXPRESSIONS}
    with ThreadPoolExecutor(workers) as pool:
        for label in pool.map(make, jobs):
            written[label] += 1
    return written


def render_demo_video(
    path, frames: int = 120, size: tuple[int, int] = (480, 640), faces: int = 2, fps: float = 15.0, seed: int = 0
) -> list[list[dict]]:
    """Write an MP4 of ``faces`` drawn faces gliding across a background and changing expression.

    Each face shows each class in turn for an equal share of the clip. Returns, per frame, the
    true ``{"face", "label", "box"}`` of every face.
    """
    from pathlib import Path

    h, w = size
    rng = np.random.default_rng(seed)
    background = _background(rng, h, w)
    labels = list(EXPRESSIONS)
    plans = []
    for k in range(faces):
        face_h = h * rng.uniform(0.35, 0.45)
        lane = (k + 0.5) / faces
        start = np.array([w * (0.2 + 0.6 * lane), h * 0.5])
        plans.append(
            {
                "size": face_h,
                "start": start,
                "phase": rng.uniform(0, 2 * math.pi),
                "offset": k * 3,
                "identity": int(rng.integers(1 << 30)),
            }
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    truth = []
    try:
        for f in range(frames):
            canvas = background.copy()
            row = []
            for k, plan in enumerate(plans):
                t = f / max(1, frames - 1)
                sway = 0.12 * w / faces
                cx = plan["start"][0] + sway * math.sin(2 * math.pi * t + plan["phase"])
                cy = plan["start"][1] + 0.08 * h * math.sin(4 * math.pi * t + plan["phase"])
                label = labels[(int(t * len(labels) * 0.999) + plan["offset"]) % len(labels)]
                face_rng = np.random.default_rng([plan["identity"], f])
                box = draw_face(canvas, cx, cy, plan["size"], EXPRESSIONS[label], face_rng, jitter=0.15)
                row.append({"face": k, "label": label, "box": list(box)})
            frame = np.clip(canvas + rng.normal(0, 3, canvas.shape), 0, 255).astype(np.uint8)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            truth.append(row)
    finally:
        writer.release()
    return truth
