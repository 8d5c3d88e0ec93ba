"""Realtime client: tracking, characters, model loading, and a headless run on a video of real faces."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from emotion_core.characters import overlay, render_character, style_for
from emotion_core.tracking import FaceTracker, iou
from tests.conftest import ROOT, textured_background

LABELS = ("happy", "sad", "surprise")


def test_tracker_keeps_ids_predicts_and_drops():
    tracker = FaceTracker(max_missed=2)
    tracks = tracker.update([(10, 10, 50, 50), (200, 10, 50, 50)])
    ids = {t.id for t in tracks}
    for step in range(1, 6):
        tracks = tracker.update([(10 + 5 * step, 10, 50, 50), (200 - 5 * step, 10, 50, 50)])
    assert {t.id for t in tracks} == ids
    moving = next(t for t in tracks if t.box[0] < 100)
    assert moving.velocity[0] == pytest.approx(5, abs=0.5)
    tracker.predict()
    assert moving.box[0] == pytest.approx(40, abs=1)  # constant-velocity prediction between detections
    for _ in range(3):
        tracker.update([(200 - 5 * 6, 10, 50, 50)])
    assert len(tracker.tracks) == 1  # the lost face is dropped after max_missed rounds
    tracker.update([(500, 300, 40, 40)])
    assert max(t.id for t in tracker.tracks) == 3  # a new face gets a new id


def test_smoothing_damps_flicker():
    tracker = FaceTracker(smoothing=0.6)
    [track] = tracker.update([(0, 0, 10, 10)])
    tracker.smooth(track, [1.0, 0.0])
    smoothed = tracker.smooth(track, [0.0, 1.0])
    assert smoothed.argmax() == 0  # one contrary frame does not flip the label


def test_characters_for_any_label_set():
    for label in (
        "pleasure",
        "upset",
        "anger",
        "unrest",
        "wound",
        "sadness",
        "neutrality",
        "happy",
        "disgust",
        "fear",
        "surprise",
        "angry",
        "sad",
        "neutral",
        "zorglub",
    ):
        sprite = render_character(label, 96)
        assert sprite.shape == (96, 96, 4) and sprite[48, 48, 3] == 255 and sprite[0, 0, 3] == 0
    assert not np.array_equal(render_character("pleasure"), render_character("sadness"))
    assert style_for("happy") == style_for("pleasure") and style_for("기쁨") == style_for("pleasure")
    frame = np.zeros((100, 100, 3), np.uint8)
    overlay(frame, render_character("anger", 64), (50, 50), 40, angle=15)
    assert frame[50, 50].sum() > 0 and frame[0, 0].sum() == 0


def register_model(store: Path, labels=LABELS) -> str:
    """Register an untrained vgg_small with ``labels`` in a fresh SQLite store; returns the tracking URI."""
    import modelstore
    from emotion_core.models import build_model
    from modelstore.runs import log_model

    uri = modelstore.configure(f"sqlite:///{store / 'mlflow.db'}")
    experiment = modelstore.ensure_experiment("test", store / "artifacts")
    with mlflow.start_run(experiment_id=experiment):
        version = log_model(
            build_model("vgg_small", 48, len(labels)),
            labels,
            48,
            np.zeros((48, 48), np.uint8),
            "emotion-classifier",
        )
    mlflow.MlflowClient().set_registered_model_alias("emotion-classifier", "champion", version)
    return uri


def two_face_video(yale: Path, path: Path, frames: int = 100) -> list[list[tuple[int, int, int, int]]]:
    """Two real Yale faces pasted and moved across a background; returns the true boxes per frame."""
    h, w = 480, 640
    background = textured_background(h, w, seed=11)
    faces = [
        cv2.imread(str(yale / "normal" / "subject02.png"), cv2.IMREAD_GRAYSCALE)[20:230, 60:260],
        cv2.imread(str(yale / "happy" / "subject07.png"), cv2.IMREAD_GRAYSCALE)[20:230, 60:260],
    ]
    from emotion_core.faces import DetectorConfig, FaceDetector

    detector = FaceDetector(DetectorConfig(working_size=0))
    in_patch = [detector.detect(face)[0] for face in faces]  # where the face sits inside its still patch
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (w, h))
    truth = []
    for f in range(frames):
        img = background.copy()
        row = []
        for k, face in enumerate(faces):
            x = int(70 + k * 290 + 60 * np.sin(2 * np.pi * f / frames + k))
            y = int(120 + 40 * np.sin(4 * np.pi * f / frames + 2 * k))
            fh, fw = face.shape
            img[y : y + fh, x : x + fw] = cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
            fx, fy, bw, bh = in_patch[k]
            row.append((x + fx, y + fy, bw, bh))
        writer.write(img)
        truth.append(row)
    writer.release()
    return truth


def run_client(*args, cwd=ROOT, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "realtime", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("mlflow")
    return path, register_model(path)


def test_headless_run_on_two_moving_real_faces(yale, store, tmp_path):
    _, uri = store
    truth = two_face_video(yale, tmp_path / "clip.mp4")
    out = run_client(
        "--source",
        str(tmp_path / "clip.mp4"),
        "--tracking-uri",
        uri,
        "-d",
        str(tmp_path / "d"),
        "--output",
        str(tmp_path / "annotated.mp4"),
        "--events",
        str(tmp_path / "events.jsonl"),
        "--stats",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert set(events[0]) == {"frame", "time_s", "track_id", "box", "label", "probs"}
    assert set(events[0]["probs"]) == set(LABELS)
    ids = sorted({e["track_id"] for e in events})
    assert len(ids) == 2, f"expected one stable track per face, got {ids}"
    matched = 0
    for e in events:
        matched += max(iou(np.array(e["box"], float), np.array(t, float)) for t in truth[e["frame"]]) >= 0.5
    assert matched >= 0.8 * len(events)
    for track_id in ids:
        frames = {e["frame"] for e in events if e["track_id"] == track_id}
        assert len(frames) >= 90  # followed through the clip
    cap = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 100
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["frames"] == 100 and summary["tracks"] == 2
    assert summary["detections_run"] < 100  # tracking lets frames skip detection


def test_client_imports_no_prefect():
    code = (
        "import sys, realtime.cli, realtime.app, modelstore\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'prefect'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr[-1000:]


def test_client_errors_are_one_line(store, tmp_path, yale):
    _, uri = store
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), cv2.imread(str(yale / "happy" / "subject01.png")))
    bad_alias = run_client(
        "--source",
        str(folder),
        "--tracking-uri",
        uri,
        "-d",
        str(tmp_path / "d"),
        "--model",
        "models:/emotion-classifier@nope",
    )
    assert bad_alias.returncode == 2 and "no registered model" in bad_alias.stderr
    assert f"emotion demo -d {tmp_path / 'd'}" in bad_alias.stderr  # says how to get one
    assert "Traceback" not in bad_alias.stderr and bad_alias.stderr.count("error:") == 1
    missing = run_client("--source", str(tmp_path / "nope.mp4"), "--tracking-uri", uri)
    assert missing.returncode == 2 and "not a camera index" in missing.stderr
    camera = run_client("--source", "7", "--tracking-uri", uri)
    assert camera.returncode == 2 and "no camera at index 7" in camera.stderr
    # First run caches the model; with the server unreachable the cache is used and said so.
    ok = run_client(
        "--source", str(folder), "--tracking-uri", uri, "-d", str(tmp_path / "d"), "--events", str(tmp_path / "e.jsonl")
    )
    assert ok.returncode == 0, ok.stderr[-1500:]
    offline = run_client("--source", str(folder), "--tracking-uri", "http://127.0.0.1:9", "-d", str(tmp_path / "d"))
    assert offline.returncode == 0, offline.stderr[-1500:]
    assert "using cached emotion-classifier" in offline.stderr
    nothing = run_client("--source", str(folder), "--tracking-uri", "http://127.0.0.1:9", "-d", str(tmp_path / "x"))
    assert nothing.returncode == 2 and "nothing is cached" in nothing.stderr


def test_tampered_or_foreign_model_is_refused(store, tmp_path):
    from modelstore import ModelLoadError, configure, load_model

    _, uri = store
    configure(uri)
    cache = tmp_path / "cache"
    loaded = load_model("models:/emotion-classifier@champion", cache)
    assert loaded.labels == LABELS and loaded.input_size == 48
    keras_file = next(loaded.path.rglob("*.keras"))
    # an archive whose config carries code (a Lambda): safe mode must refuse to deserialise it
    import keras

    marker = tmp_path / "code-ran"
    inputs = keras.Input((48, 48, 1))
    payload = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # noqa: S307
    outputs = keras.layers.Lambda(payload)(inputs)
    keras.Model(inputs, keras.layers.Dense(len(LABELS))(keras.layers.Flatten()(outputs))).save(keras_file)
    marker.unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_model("models:/emotion-classifier@champion", cache)
    assert not marker.exists()
    keras_file.write_bytes(b"PK\x03\x04 not really a keras archive")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_model("models:/emotion-classifier@champion", cache)
    keras_file.unlink()
    with pytest.raises(ModelLoadError, match="no Keras .keras file"):
        load_model("models:/emotion-classifier@champion", cache)
    with pytest.raises(ModelLoadError, match="not of the form"):
        load_model("emotion-classifier", cache)


def test_live_faces_sharper_than_the_training_faces_are_reported_once_and_can_be_matched(yale, caplog):
    """A model carries its training faces' sharpness (FER2013's blurred train split: ~6); sharp live
    faces get one warning, and with match_sharpness every later face is blurred to that sharpness."""
    from emotion_core.models import build_model
    from realtime.app import Options, RealtimeApp

    model = build_model("vgg_lite", 48, len(LABELS))
    frames = [cv2.imread(str(p)) for p in sorted(yale.glob("*/subject*.png"))[:45]]
    outcomes = {}
    for match in (False, True):
        caplog.clear()
        app = RealtimeApp(model, LABELS, 48, Options(train_sharpness=6.1, match_sharpness=match))
        faces = sum(len(app.process(frame, i)[0]) for i, frame in enumerate(frames))
        assert faces >= 30
        outcomes[match] = (app.sharpness.sigma, [r.getMessage() for r in caplog.records if r.name == "realtime"])
    sigma, messages = outcomes[False]
    assert sigma == 0 and len(messages) == 1
    assert messages[0].startswith("warning: the live faces are") and "sharper than the training faces" in messages[0]
    sigma, messages = outcomes[True]
    assert sigma >= 1.0 and len(messages) == 1 and messages[0].startswith("note: the live faces are")
    caplog.clear()
    plain = RealtimeApp(model, LABELS, 48, Options())  # a model without the figure: nothing to compare
    for i, frame in enumerate(frames):
        plain.process(frame, i)
    assert not [r for r in caplog.records if r.name == "realtime"]
