"""The [landmarks] extra: 68 points fitted in the Haar box, characters anchored on them, the client's
--landmarks, and the client without the extra."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from emotion_core.characters import CHARACTER_ANCHORS, overlay_anchored
from emotion_core.landmarks import anchors, load_landmarks, roll_degrees
from tests.conftest import ROOT
from tests.test_realtime import register_model, run_client, two_face_video

DETECTOR, MISSING = load_landmarks()
needs_extra = pytest.mark.skipif(DETECTOR is None, reason=f"{MISSING}")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow")
    return path, register_model(path)


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize(
    "targets",
    [
        [[120, 100], [180, 100], [150, 160]],  # upright
        [[110, 90], [170, 120], [125, 170]],  # tilted, as a face rolled ~27 degrees
        [[5, 20], [60, 20], [30, 70]],  # partly outside the frame
    ],
)
def test_character_eyes_and_mouth_land_on_the_targets(targets):
    size = 200
    sprite = np.zeros((size, size, 4), np.uint8)
    colors = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
    for (fx, fy), color in zip(CHARACTER_ANCHORS, colors, strict=True):
        cv2.circle(sprite, (int(fx * size), int(fy * size)), 4, (*color, 255), -1)
    frame = np.zeros((240, 320, 3), np.uint8)
    overlay_anchored(frame, sprite, np.float32(targets))
    for target, channel in zip(targets, (2, 1, 0), strict=True):
        mask = (frame[:, :, channel] > 128) & (frame.sum(axis=2) < 400)
        assert mask.any()
        if target[0] > 10:  # a dot cut by the frame's edge has a shifted centroid
            assert np.linalg.norm(_centroid(mask) - target) < 1.5


@needs_extra
def test_landmarks_in_haar_boxes_match_dlibs_own_boxes_on_real_faces(yale):
    """Independent reference: the same predictor in the box of dlib's own HOG detector."""
    import dlib

    from emotion_core.faces import DetectorConfig, FaceDetector
    from emotion_core.imageio import decode, read_bytes

    haar = FaceDetector(DetectorConfig(working_size=320, min_face_frac=0.12, min_face_px=24))
    hog = dlib.get_frontal_face_detector()
    errors = []
    for path in sorted(yale.glob("*/*.png"))[::4]:
        gray = decode(read_bytes(path), mode="gray")
        boxes, rects = haar.detect(gray), hog(gray, 1)
        if len(boxes) != 1 or len(rects) != 1:
            continue
        r = rects[0]
        reference = anchors(DETECTOR.fit(gray, (r.left(), r.top(), r.width(), r.height())))
        ours = anchors(DETECTOR.fit(gray, boxes[0]))
        errors.append(np.linalg.norm(ours - reference, axis=1).max() / boxes[0][2])
        x, y, w, h = boxes[0]
        (lx, ly), (rx, ry), (mx, my) = ours
        assert x < lx < rx < x + w and y < ly < my < y + h  # eyes left to right, mouth below
    assert len(errors) >= 35
    assert np.percentile(errors, 90) < 0.03


@needs_extra
def test_roll_follows_a_rotated_face(yale):
    from emotion_core.faces import DetectorConfig, FaceDetector

    gray = cv2.imread(str(yale / "normal" / "subject05.png"), cv2.IMREAD_GRAYSCALE)
    haar = FaceDetector(DetectorConfig(working_size=0))
    upright = roll_degrees(DETECTOR.fit(gray, haar.detect(gray)[0]))
    h, w = gray.shape
    for turn in (-15, 15):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), -turn, 1.0)  # OpenCV: positive is anticlockwise
        rotated = cv2.warpAffine(gray, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
        box = haar.detect(rotated)[0]
        assert roll_degrees(DETECTOR.fit(rotated, box)) - upright == pytest.approx(turn, abs=4)


@needs_extra
def test_client_with_landmarks_puts_them_on_each_tracked_face(yale, store, tmp_path):
    _, uri = store
    truth = two_face_video(yale, tmp_path / "clip.mp4", frames=40)
    out = run_client(
        "--source", str(tmp_path / "clip.mp4"), "--tracking-uri", uri, "-d", str(tmp_path / "d"),
        "--landmarks", "--output", str(tmp_path / "out.mp4"), "--events", str(tmp_path / "events.jsonl"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "optional extra" not in out.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len({e["track_id"] for e in events}) == 2
    inside = 0
    for e in events:
        points = np.array(e["landmarks"])
        assert points.shape == (68, 2)
        left, right, mouth = anchors(points)
        for x, y, w, h in truth[e["frame"]]:
            inside += x < left[0] < right[0] < x + w and y < left[1] < mouth[1] < y + h
    assert inside >= 0.9 * len(events)
    assert int(cv2.VideoCapture(str(tmp_path / "out.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 40


def test_client_without_the_extra_says_so_once_and_runs(yale, store, tmp_path):
    _, uri = store
    two_face_video(yale, tmp_path / "clip.mp4", frames=20)
    code = (
        "import sys; sys.modules['dlib'] = None\n"  # as if dlib-bin were not installed
        "from realtime.cli import main; main()"
    )
    args = ["--source", str(tmp_path / "clip.mp4"), "--tracking-uri", uri, "-d", str(tmp_path / "d")]
    args += ["--landmarks", "--events", str(tmp_path / "events.jsonl")]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stderr.count("landmarks need the optional extra (pip install '.[landmarks]')") == 1
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events and all("landmarks" not in e for e in events)
