"""Frame sources: a webcam index, a video file, a folder of images, or a stream URL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emotion_core.imageio import IMAGE_EXTENSIONS, ImageError, decode, read_bytes


class CaptureError(RuntimeError):
    """A source that cannot be opened, or that failed mid-run."""


@dataclass
class Frame:
    index: int
    time_s: float
    image: np.ndarray  # BGR


class FrameSource:
    """Iterates frames; ``fps`` is the source's nominal rate (used for the output video)."""

    kind: str = "source"
    fps: float = 25.0

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VideoSource(FrameSource):
    """OpenCV capture of a camera, file or URL. A camera that stops delivering frames is an error;
    a file that ends is the normal end."""

    def __init__(self, spec: str | int, kind: str, fail_after: int = 30):
        self.kind = kind
        self.spec = spec
        self.cap = cv2.VideoCapture(spec)
        if not self.cap.isOpened():
            what = {"camera": f"no camera at index {spec}", "video": f"cannot open video {spec}"}.get(
                kind, f"cannot open stream {spec}"
            )
            raise CaptureError(what)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 25.0
        self.fail_after = fail_after

    def __iter__(self) -> Iterator[Frame]:
        index, failures, start = 0, 0, time.monotonic()
        while True:
            ok, image = self.cap.read()
            if not ok or image is None:
                if self.kind == "video":
                    return
                failures += 1
                if failures >= self.fail_after:
                    raise CaptureError(f"the {self.kind} {self.spec} stopped delivering frames (unplugged?)")
                time.sleep(0.01)
                continue
            failures = 0
            t = index / self.fps if self.kind == "video" else time.monotonic() - start
            yield Frame(index, t, image)
            index += 1

    def close(self) -> None:
        self.cap.release()


class FolderSource(FrameSource):
    """Images of a folder in name order, as frames at ``fps``; unreadable files are skipped with a warning."""

    kind = "folder"

    def __init__(self, folder: Path, fps: float = 10.0):
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise CaptureError(f"no images in folder {folder}")
        self.fps = fps
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for path in self.files:
            try:
                image = decode(read_bytes(path), mode="color")
            except ImageError as exc:
                self.skipped.append(f"{path.name}: {exc.reason}")
                continue
            yield Frame(index, index / self.fps, image)
            index += 1


def open_source(spec: str) -> FrameSource:
    """Open ``spec``: digits are a webcam index, a folder is an image sequence, a URL a stream, else a file."""
    if spec.isdigit():
        return VideoSource(int(spec), "camera")
    if "://" in spec:
        return VideoSource(spec, "stream")
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise CaptureError(f"source {spec} is not a camera index, folder, URL or existing file")
    return VideoSource(str(path), "video")
