"""Face tracking across video frames: IoU/centroid association, constant-velocity prediction for
frames without detection, stable track ids, and temporal smoothing of class probabilities."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    """One tracked face. ``box`` is (x, y, w, h) in frame pixels (float)."""

    id: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    probs: np.ndarray | None = None
    missed: int = 0  # consecutive detection rounds without a match
    hits: int = 1
    angle: float = 0.0  # in-plane tilt in degrees, from the eyes when found
    landmarks: np.ndarray | None = None  # (68, 2) points of the last frame, with the landmarks extra

    def int_box(self) -> tuple[int, int, int, int]:
        x, y, w, h = (int(round(v)) for v in self.box)
        return x, y, max(1, w), max(1, h)


class FaceTracker:
    """Associates detections with tracks; keeps a lost track ``max_missed`` rounds before dropping it."""

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5, smoothing: float = 0.6):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing  # weight of the past in the probability average
        self.tracks: list[Track] = []
        self._next_id = 1
        self._frames_since_detection = 0

    def predict(self) -> list[Track]:
        """Advance every track by its velocity (a frame without detection)."""
        for track in self.tracks:
            track.box = track.box + track.velocity
        self._frames_since_detection += 1
        return self.tracks

    def predicted_boxes(self) -> list[np.ndarray]:
        """Where each track is expected in the next frame (without advancing the tracks)."""
        return [t.box + t.velocity for t in self.tracks]

    def update(self, detections: list[tuple[int, int, int, int]]) -> list[Track]:
        """Match this frame's detections to the tracks (greedy by IoU, then by centroid distance)."""
        gap = self._frames_since_detection + 1
        self._frames_since_detection = 0
        predicted = [t.box + t.velocity for t in self.tracks]
        dets = [np.asarray(d, dtype=np.float64) for d in detections]
        pairs = []
        for ti, box in enumerate(predicted):
            for di, det in enumerate(dets):
                score = iou(box, det)
                if score < self.iou_threshold:
                    cx = abs((box[0] + box[2] / 2) - (det[0] + det[2] / 2))
                    cy = abs((box[1] + box[3] / 2) - (det[1] + det[3] / 2))
                    if max(cx, cy) > 0.5 * max(box[2], det[2]):
                        continue
                    score = 0.01  # near enough by centroid: a weak match after all IoU matches
                pairs.append((score, ti, di))
        used_t, used_d = set(), set()
        for _score, ti, di in sorted(pairs, reverse=True):
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track = self.tracks[ti]
            step = (dets[di] - track.box) / gap
            track.velocity = 0.5 * track.velocity + 0.5 * step if track.hits > 1 else step
            track.box = dets[di]
            track.missed = 0
            track.hits += 1
        for ti, track in enumerate(self.tracks):
            if ti not in used_t:
                track.missed += 1
                track.box = predicted[ti]
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for di, det in enumerate(dets):
            if di not in used_d:
                self.tracks.append(Track(self._next_id, det))
                self._next_id += 1
        return self.tracks

    def smooth(self, track: Track, probs: np.ndarray) -> np.ndarray:
        """Blend new class probabilities into the track's running average and return it."""
        probs = np.asarray(probs, dtype=np.float64)
        track.probs = probs if track.probs is None else self.smoothing * track.probs + (1 - self.smoothing) * probs
        return track.probs
