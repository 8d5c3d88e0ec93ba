"""Shared fixtures: the real datasets, the Prefect test harness and small generated image trees."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from flows import environment

ROOT = Path(__file__).resolve().parents[1]
environment.configure()


def datasets_dir() -> Path:
    return Path(os.environ.get("EMOTION_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets() -> Path:
    path = datasets_dir()
    if not (path / "yalefaces").is_dir() or not (path / "fer2013").is_dir():
        pytest.skip(f"real datasets not found at {path} (set EMOTION_DATASETS to their folder)")
    return path


@pytest.fixture(scope="session")
def yale(datasets) -> Path:
    return datasets / "yalefaces"


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database for the whole test session. Its flow runs send no
    heartbeats, as with the commands' embedded API (``environment.prefect_api``)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=180),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


def jpeg_bytes(img: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def textured_background(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, size=(max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), 3)


def photo_with_face(face_gray: np.ndarray, seed: int, size=(480, 640), scale: float = 1.5) -> np.ndarray:
    """A colour photo with one real face pasted on a textured background."""
    h, w = size
    img = textured_background(h, w, seed)
    face = cv2.resize(face_gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    fh, fw = face.shape
    y, x = (h - fh) // 2, (w - fw) // 2
    img[y : y + fh, x : x + fw] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    return img


@pytest.fixture
def small_tree(tmp_path, yale) -> Path:
    """An AIHub-layout tree with Korean names and spaces, and one file of each kind of bad input.

    Per class folder: 3 real faces; plus a corrupt JPEG, a zero-byte file, a text file named
    .jpg, and a photo without a face.
    """
    root = tmp_path / "input"
    faces = sorted((yale / "happy").glob("*.png")) + sorted((yale / "normal").glob("*.png"))
    folders = ["기쁨_TRAIN_1", "분노_TRAIN_1", "중립_TRAIN_2"]
    k = 0
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for n in range(3):
            gray = cv2.imread(str(faces[k % len(faces)]), cv2.IMREAD_GRAYSCALE)
            (root / folder / f"사진 ({n + 1}).jpg").write_bytes(jpeg_bytes(photo_with_face(gray, seed=k)))
            k += 1
    bad = root / folders[0]
    good = jpeg_bytes(photo_with_face(cv2.imread(str(faces[0]), cv2.IMREAD_GRAYSCALE), seed=99))
    (bad / "잘림 (1).jpg").write_bytes(good[: len(good) // 3])
    (bad / "빈 파일 (1).jpg").write_bytes(b"")
    (bad / "텍스트 (1).jpg").write_text("this is not an image\n")
    (bad / "얼굴 없음 (1).jpg").write_bytes(jpeg_bytes(textured_background(480, 640, seed=5)))
    return root
