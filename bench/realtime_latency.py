"""Realtime latency: the seed's per-frame loop against the project's client, on one CPU core.

    python -m bench.realtime_latency [--frames 200] [--preset cpu]

Frames are 640x480 with 1, 3 or 6 real Yale faces moving across a textured background. The seed's
loop runs the Haar cascade (1.3, 5) on the full frame every frame and ``model.predict`` per face; the
project's client searches the whole frame (on a 320 px copy) every 30th frame, re-finds each tracked
face in a window around its predicted box every 3rd frame, predicts positions in between, and
classifies all faces of a frame in one traced call. Both use the same model weights. The default model
is built as the ``cpu`` preset (or ``--preset``'s) saves it (with flip averaging inside when the preset
has it). Run pinned to one core.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, before numpy/TF start threads

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.data_stages import datasets_dir  # noqa: E402


def make_frames(n_frames: int, n_faces: int, seed: int = 0) -> list[np.ndarray]:
    yale = sorted((datasets_dir() / "yalefaces").glob("normal/*.png"))
    faces = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[30:220, 70:250] for p in yale[:n_faces]]
    faces = [cv2.resize(f, None, fx=0.75 if n_faces > 3 else 1.0, fy=0.75 if n_faces > 3 else 1.0) for f in faces]
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(cv2.resize(rng.integers(40, 220, (30, 40, 3), dtype=np.uint8), (640, 480)), (0, 0), 3)
    frames = []
    cols = min(n_faces, 3)
    for f in range(n_frames):
        img = bg.copy()
        for k, face in enumerate(faces):
            fh, fw = face.shape
            cx = (k % cols + 0.5) * 640 / cols + 30 * np.sin(2 * np.pi * f / 100 + k)
            cy = (k // cols + 0.5) * 480 / ((n_faces + 2) // 3) + 20 * np.cos(2 * np.pi * f / 80 + k)
            x, y = int(np.clip(cx - fw / 2, 0, 640 - fw)), int(np.clip(cy - fh / 2, 0, 480 - fh))
            img[y : y + fh, x : x + fw] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
        frames.append(img)
    return frames


def seed_loop(model, frames: list[np.ndarray]) -> list[float]:
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    times = []
    for frame in frames:
        t0 = time.perf_counter()
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for x, y, w, h in cascade.detectMultiScale(gray, 1.3, 5):
            face = cv2.resize(gray[y : y + h, x : x + w], (48, 48))[None, :, :, None].astype("float32")
            model.predict(face, verbose=0)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def project_loop(model, frames: list[np.ndarray], labels: tuple[str, ...], landmarks=None) -> list[float]:
    """Per-frame ms of the client's processing; with ``landmarks`` also fitting them and drawing the
    characters anchored on them."""
    from realtime.app import Options, RealtimeApp

    app = RealtimeApp(model, labels, 48, Options(characters=landmarks is not None, landmarks=landmarks))
    times = []
    for i, frame in enumerate(frames):
        t0 = time.perf_counter()
        tracks, _ = app.process(frame, i)
        if landmarks is not None:
            app.draw(frame, tracks, {}, 0.0)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def stats(times: list[float]) -> dict[str, float]:
    steady = times[10:]  # the first frames include tracing and warm-up
    return {
        "ms_mean": float(np.mean(steady)),
        "ms_p95": float(np.percentile(steady, 95)),
        "fps": 1000.0 / float(np.mean(steady)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--preset", default="cpu", help="the preset whose saved model the client runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    from emotion_core.landmarks import load_landmarks
    from emotion_core.models import build_model
    from emotion_core.train import PRESETS, inference_model

    labels = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    # The preset's model as it saves it (float32; flip-averaged when the preset says so).
    config = PRESETS[args.preset].resolved()
    seed_model, default_model = build_model("seed_cnn", 48, 7), inference_model(config, 7)
    results = {}
    frames = make_frames(args.frames, 1)
    results["seed_loop_seed_cnn"] = stats(seed_loop(seed_model, frames))
    results["project_seed_cnn"] = stats(project_loop(seed_model, frames, labels))
    for n in (1, 3, 6):
        results[f"project_{config.model}_{n}_faces"] = stats(
            project_loop(default_model, make_frames(args.frames, n), labels)
        )
    detector, reason = load_landmarks()
    if detector is not None:  # the [landmarks] extra: points fitted every frame, characters drawn on them
        results[f"project_{config.model}_1_face_landmarks_and_characters"] = stats(
            project_loop(default_model, frames, labels, landmarks=detector)
        )
    else:
        results["landmarks"] = reason
    results["speedup_same_model"] = results["seed_loop_seed_cnn"]["ms_mean"] / results["project_seed_cnn"]["ms_mean"]
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
