"""The demo: generated faces a Haar cascade finds, and a reduced ``emotion demo`` end to end."""

import json

import cv2
import numpy as np
import pytest

from emotion_core.faces import FaceDetector
from emotion_core.synthetic import EXPRESSIONS, demo_file, render_face_photo, write_demo_dataset


def test_generated_faces_are_found_by_the_cascade():
    detector = FaceDetector()
    rng = np.random.default_rng(123)
    found = hits = 0
    for label in EXPRESSIONS:
        for _ in range(8):
            img, (x, y, w, h) = render_face_photo(label, rng)
            boxes = detector.detect(img)
            found += bool(boxes)
            if boxes:
                bx, by, bw, bh = boxes[0]
                hits += x <= bx + bw / 2 <= x + w and y <= by + bh / 2 <= y + h  # the box is on the face
    assert found >= 0.9 * 56 and hits >= 0.9 * 56


def test_demo_dataset_layout_and_reuse(tmp_path):
    written = write_demo_dataset(tmp_path, per_class=2, size=(240, 320))
    assert written == {label: 2 for label in EXPRESSIONS}
    assert (tmp_path / demo_file("pleasure", 1)).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{k}_TRAIN_1" for k in ("기쁨", "당황", "분노", "불안", "상처", "슬픔", "중립")
    )
    first = (tmp_path / demo_file("anger", 0)).read_bytes()
    (tmp_path / demo_file("anger", 0)).unlink()
    assert write_demo_dataset(tmp_path, per_class=2, size=(240, 320))["anger"] == 1
    assert (tmp_path / demo_file("anger", 0)).read_bytes() == first  # deterministic per photo


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_reduced_demo_end_to_end(tmp_path):
    from flows.demo import run_demo

    result = run_demo(tmp_path / "data", per_class=10, epochs=1, frames=20)
    assert result["compress"]["status"]["ok"] == 70
    assert result["crop"]["status"].get("ok", 0) >= 63  # >= 90% of generated faces found
    assert result["train"]["alias"] == "champion" and result["train"]["version"] == "1"
    rt = result["realtime"]
    assert rt["frames"] == 20 and rt["faces"] >= 30
    events = [json.loads(line) for line in open(rt["events"], encoding="utf-8")]
    assert events and set(events[0]["probs"]) == set(EXPRESSIONS)
    assert int(cv2.VideoCapture(rt["annotated"]).get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    summary = json.loads((tmp_path / "data" / "demo-summary.json").read_text())
    assert summary["train"]["model_uri"] == "models:/emotion-demo/1"  # never competes with real-face models
    again = run_demo(tmp_path / "data", per_class=10, epochs=1, frames=20)  # a rerun reuses everything
    assert again["train"]["reused"] and again["compress"]["chunks_cached"] == again["compress"]["chunks"]
