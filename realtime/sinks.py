"""Where annotated frames and events go: an MP4 file, a JSON-lines file, a window."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


class VideoSink:
    """Writes frames to a video file, opened on the first frame; always closed properly."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {self.path}")
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class EventSink:
    """One JSON line per face per processed frame, flushed every frame so a crash keeps what was written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("w", encoding="utf-8")
        self.lines = 0

    def write(self, events: list[dict]) -> None:
        for event in events:
            self.fh.write(json.dumps(event, ensure_ascii=False) + "\n")
        self.lines += len(events)
        self.fh.flush()

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.close()


class WindowSink:
    """An OpenCV window; reports when the user pressed q or Esc."""

    def __init__(self, title: str = "emotion realtime"):
        self.title = title

    def show(self, frame: np.ndarray) -> bool:
        cv2.imshow(self.title, frame)
        return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    def close(self) -> None:
        cv2.destroyWindow(self.title)
