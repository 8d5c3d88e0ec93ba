"""The realtime loop: capture -> detect/track -> batch classify -> draw -> sinks."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from emotion_core.characters import draw_landmarks, eye_angle, overlay, overlay_anchored, render_character
from emotion_core.faces import DetectorConfig, FaceDetector
from emotion_core.landmarks import anchors
from emotion_core.quality import LiveSharpness
from emotion_core.tracking import FaceTracker, Track, iou

from .capture import FrameSource
from .classify import BatchClassifier
from .sinks import EventSink, VideoSink, WindowSink

log = logging.getLogger("realtime")
STAGES = ("decode", "detect", "classify", "draw")


@dataclass
class Options:
    detect_every: int = 3  # look for the tracked faces (around their predicted boxes) every N frames
    full_detect_every: int = 30  # search the whole frame for new faces every N frames (and when a track is lost)
    working_size: int = 320  # detection runs on the frame reduced to this longest side
    min_neighbors: int = 4
    characters: bool = True
    landmarks: object | None = None  # a LandmarkDetector (the [landmarks] extra) to fit and draw 68 points
    stats: bool = False
    max_frames: int | None = None
    train_sharpness: float | None = None  # the model's training faces' median sharpness, if it carries one
    match_sharpness: bool = False  # blur live faces much sharper than the training faces to match them


@dataclass
class RunStats:
    frames: int = 0
    faces: int = 0
    detections_run: int = 0
    track_ids: set[int] = field(default_factory=set)
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    wall_s: float = 0.0

    def summary(self) -> dict:
        out = {
            "frames": self.frames,
            "faces": self.faces,
            "tracks": len(self.track_ids),
            "detections_run": self.detections_run,
            "fps": self.frames / self.wall_s if self.wall_s else 0.0,
        }
        for stage, values in self.latency_ms.items():
            if values:
                out[f"{stage}_ms_mean"] = float(np.mean(values))
                out[f"{stage}_ms_p95"] = float(np.percentile(values, 95))
        return out


def _label_color(index: int) -> tuple[int, int, int]:
    hue = (index * 37) % 180
    hsv = np.uint8([[[hue, 200, 255]]])
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


class RealtimeApp:
    """Labels faces in frames with a registered model; usable headless (no window) or with a display."""

    def __init__(self, model, labels: tuple[str, ...], input_size: int, options: Options = Options()):
        self.labels = labels
        self.options = options
        self.sharpness = LiveSharpness(options.train_sharpness, match=options.match_sharpness)
        self.classifier = BatchClassifier(model, input_size, len(labels), adapt=self.sharpness)
        self.detector = FaceDetector(
            DetectorConfig(
                working_size=options.working_size,
                min_neighbors=options.min_neighbors,
                min_face_frac=0.12,
                min_face_px=24,
            )
        )
        # Re-finding a tracked face needs only the region around it: a 2x box reduced to 128 px.
        self.local_detector = FaceDetector(
            DetectorConfig(working_size=128, min_neighbors=options.min_neighbors, min_face_frac=0.3, min_face_px=24)
        )
        self._last_full = -(10**9)
        self.eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye_tree_eyeglasses.xml")
        self.tracker = FaceTracker()
        self.stats = RunStats()

    def process(self, image: np.ndarray, frame_index: int) -> tuple[list[Track], dict[str, float]]:
        """Detect (or predict) faces, classify them in one batch, smooth per track."""
        times = {}
        t0 = time.perf_counter()
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        t1 = time.perf_counter()
        tracked = self.tracker.tracks
        full = (
            not tracked
            or any(t.missed for t in tracked)
            or frame_index - self._last_full >= self.options.full_detect_every
        )
        detect = full or frame_index % self.options.detect_every == 0
        if full:
            tracks = self.tracker.update(self.detector.detect(gray))
            self._last_full = frame_index
            self.stats.detections_run += 1
        elif detect:
            tracks = self.tracker.update(self._detect_near_tracks(gray))
        else:
            tracks = self.tracker.predict()
        visible = [t for t in tracks if t.missed == 0 or not detect]
        t2 = time.perf_counter()
        crops = []
        for track in visible:
            x, y, w, h = _clip(track.int_box(), gray.shape)
            crops.append(gray[y : y + h, x : x + w])
        probs = self.classifier(crops)
        if self.sharpness.message:  # said once, after the first 30 faces
            log.warning(self.sharpness.message)
            self.sharpness.message = None
        for track, p in zip(visible, probs, strict=True):
            self.tracker.smooth(track, p)
        t3 = time.perf_counter()
        if self.options.landmarks is not None:  # ~1 ms per face, every frame: the points follow the face
            for track in visible:
                track.landmarks = self.options.landmarks.fit(gray, _clip(track.int_box(), gray.shape))
        elif detect and self.options.characters:
            for track, crop in zip(visible, crops, strict=True):
                angle = eye_angle(crop, self.eyes)
                track.angle = angle if angle is not None else 0.8 * track.angle
        t4 = time.perf_counter()  # face geometry (landmarks or eyes) counts as detection
        times.update(decode=(t1 - t0) * 1000, detect=(t2 - t1 + t4 - t3) * 1000, classify=(t3 - t2) * 1000)
        return visible, times

    def _detect_near_tracks(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Faces found in a window twice the size of each track's predicted box (cheap: ~1 ms each)."""
        found = []
        height, width = gray.shape[:2]
        for x, y, w, h in self.tracker.predicted_boxes():
            margin = 0.5 * max(w, h)
            x0, y0 = int(max(0, x - margin)), int(max(0, y - margin))
            x1, y1 = int(min(width, x + w + margin)), int(min(height, y + h + margin))
            if x1 - x0 < 24 or y1 - y0 < 24:
                continue
            boxes = self.local_detector.detect(gray[y0:y1, x0:x1])
            if boxes:
                bx, by, bw, bh = boxes[0]
                box = (bx + x0, by + y0, bw, bh)
                if all(iou(np.asarray(box), np.asarray(other)) < 0.5 for other in found):  # windows may overlap
                    found.append(box)
        return found

    def draw(self, image: np.ndarray, tracks: list[Track], times: dict[str, float], fps: float) -> np.ndarray:
        out = image.copy()
        for track in tracks:
            if track.probs is None:
                continue
            k = int(np.argmax(track.probs))
            label, conf = self.labels[k], float(track.probs[k])
            x, y, w, h = track.int_box()
            color = _label_color(k)
            cv2.rectangle(out, (x, y), (x + w, y + h), color, 2, cv2.LINE_AA)
            text = f"#{track.id} {label} {conf:.0%}"
            cv2.putText(out, text, (x, max(14, y + h + 18)), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, text, (x, max(14, y + h + 18)), cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, 1, cv2.LINE_AA)
            if self.options.characters and track.landmarks is not None:
                overlay_anchored(out, render_character(label, 256), anchors(track.landmarks))
            elif self.options.characters:
                size = int(w * 0.6)
                overlay(out, render_character(label), (x + w / 2, y - size * 0.35), size, track.angle)
            if track.landmarks is not None:
                draw_landmarks(out, track.landmarks, color)
        if self.options.stats:
            lines = [f"{fps:5.1f} fps"] + [f"{s} {times.get(s, 0):5.1f} ms" for s in STAGES]
            for i, line in enumerate(lines):
                cv2.putText(
                    out, line, (8, 18 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA
                )
        return out

    @staticmethod
    def events(frame_index: int, time_s: float, tracks: list[Track], labels: tuple[str, ...]) -> list[dict]:
        rows = []
        for track in tracks:
            if track.probs is None:
                continue
            k = int(np.argmax(track.probs))
            rows.append(
                {
                    "frame": frame_index,
                    "time_s": round(time_s, 4),
                    "track_id": track.id,
                    "box": list(track.int_box()),
                    "label": labels[k],
                    "probs": {label: round(float(p), 5) for label, p in zip(labels, track.probs, strict=True)},
                }
            )
            if track.landmarks is not None:  # with --landmarks: the 68 points, [[x, y], ...] in frame pixels
                rows[-1]["landmarks"] = np.round(track.landmarks, 1).tolist()
        return rows

    def run(
        self, source: FrameSource, output: Path | None = None, events: Path | None = None, display: bool = False
    ) -> RunStats:
        """Process every frame of ``source``; sinks are closed properly whatever happens."""
        video = VideoSink(output, source.fps) if output else None
        event_sink = EventSink(events) if events else None
        window = WindowSink() if display else None
        stats = self.stats
        start = time.perf_counter()
        last = start
        try:
            for frame in source:
                tracks, times = self.process(frame.image, frame.index)
                now = time.perf_counter()
                fps = 1.0 / max(now - last, 1e-6)
                last = now
                t0 = time.perf_counter()
                shown = {**times, "draw": stats.latency_ms["draw"][-1] if stats.latency_ms["draw"] else 0.0}
                annotated = self.draw(frame.image, tracks, shown, fps) if (video or window) else frame.image
                times["draw"] = (time.perf_counter() - t0) * 1000
                if video:
                    video.write(annotated)
                if event_sink:
                    event_sink.write(self.events(frame.index, frame.time_s, tracks, self.labels))
                for stage, ms in times.items():
                    stats.latency_ms[stage].append(ms)
                stats.frames += 1
                stats.faces += len(tracks)
                stats.track_ids.update(t.id for t in tracks)
                if self.options.stats and stats.frames % 30 == 0:
                    log.info("frame %d: %s", frame.index, {k: round(v, 1) for k, v in times.items()})
                if window and not window.show(annotated):
                    break
                if self.options.max_frames and stats.frames >= self.options.max_frames:
                    break
        finally:
            stats.wall_s = time.perf_counter() - start
            for sink in (video, event_sink, window):
                if sink is not None:
                    sink.close()
            source.close()
        return stats


def _clip(box: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    x, y = max(0, min(x, shape[1] - 1)), max(0, min(y, shape[0] - 1))
    return x, y, max(1, min(w, shape[1] - x)), max(1, min(h, shape[0] - y))
