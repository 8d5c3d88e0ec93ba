"""The shipped FER2013 model and the image-in python_function flavour: install, evaluate, serve."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from modelstore.pretrained import MAX_BYTES, REGISTERED_NAME, SHIPPED_DIR, fingerprint, provenance
from tests.conftest import ROOT

SHIPPED_URI = f"models:/{REGISTERED_NAME}@champion"


def test_shipped_model_is_small_and_says_what_it_is():
    size = sum(p.stat().st_size for p in SHIPPED_DIR.rglob("*") if p.is_file())
    assert 0 < size <= MAX_BYTES
    info = provenance()
    assert info["labels"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert info["sha256"] == fingerprint() and info["input_size"] == 48 and "preprocess_face" in info["preprocessing"]
    assert info["training"]["run_id"] and info["training"]["params"]["model"]
    assert info["data"]["manifest_hash"] and info["data"]["sizes"]["n_train"] > 20_000
    assert 0.5 < info["metrics"]["public_test_accuracy"] < 1 and "public_test_macro_f1" in info["metrics"]
    assert info["commit"] and info["command"] and "research data" in info["terms"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, str]:
    """The shipped model installed into a fresh embedded store, through the CLI."""
    from flows.cli import app

    data_dir = tmp_path_factory.mktemp("pretrained") / "data"
    result = CliRunner().invoke(app, ["model", "install-pretrained", "-d", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"registered models:/{REGISTERED_NAME}/1 with aliases @champion, @pretrained" in result.output
    return data_dir, f"sqlite:///{(data_dir / 'mlflow' / 'mlflow.db').resolve()}"


def test_install_is_idempotent_and_the_version_describes_itself(installed):
    from flows.cli import app

    data_dir, uri = installed
    again = CliRunner().invoke(app, ["model", "install-pretrained", "-d", str(data_dir)])
    assert again.exit_code == 0 and "already registered (nothing added)" in again.output
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    [version] = client.search_model_versions(f"name='{REGISTERED_NAME}'")
    assert client.get_model_version_by_alias(REGISTERED_NAME, "pretrained").version == version.version
    info = provenance()
    assert version.tags["shipped"] == "true" and version.tags["labels"] == ",".join(info["labels"])
    assert float(version.tags["public_test_accuracy"]) == pytest.approx(info["metrics"]["public_test_accuracy"], 1e-3)
    assert "FER2013 is research data" in version.description and "public_test_accuracy" in version.description
    run = client.get_run(version.run_id)
    assert run.data.tags["reproduce"] == info["command"] and run.data.params["model"] == "vgg_mid"


def test_evaluate_on_public_test_prints_the_stated_accuracy(installed, datasets):
    data_dir, _ = installed
    out = subprocess.run(
        [sys.executable, "-m", "flows", "evaluate", "-d", str(data_dir), "--model", SHIPPED_URI, "--json"]
        + ["--data", str(datasets / "fer2013" / "public_test")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    stated = provenance()["metrics"]
    assert report["n"] == 3589 and report["model"] == f"{REGISTERED_NAME}/1"
    assert report["accuracy"] == pytest.approx(stated["public_test_accuracy"], abs=1e-4)
    assert report["macro_f1"] == pytest.approx(stated["public_test_macro_f1"], abs=1e-4)


def test_realtime_uses_the_shipped_model_when_none_is_trained(installed, yale, tmp_path):
    data_dir, _ = installed
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("subject01", "subject02"):
        (frames / f"{name}.png").write_bytes((yale / "happy" / f"{name}.png").read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "realtime", "--source", str(frames), "-d", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["model"] == f"{REGISTERED_NAME}/1" and summary["faces"] == 2
    assert f"model: models:/{REGISTERED_NAME}/1" in out.stderr


def fer_faces(datasets: Path, per_class: int = 12) -> list[Path]:
    root = datasets / "fer2013" / "public_test"
    return [p for label in sorted(os.listdir(root)) for p in sorted((root / label).glob("*.jpg"))[:per_class]]


YALE = [("happy", "subject01"), ("sad", "subject04"), ("surprised", "subject07"), ("normal", "subject10")]


def test_pyfunc_agrees_with_evaluate_and_the_crop_stage(installed, datasets, tmp_path):
    from emotion_core.evaluate import load_labelled_faces, predict_probs
    from emotion_core.faces import crop_file
    from emotion_core.imageio import decode, read_bytes
    from modelstore import configure, load_model

    data_dir, uri = installed
    configure(uri)
    model = mlflow.pyfunc.load_model(SHIPPED_URI)
    loaded = load_model(SHIPPED_URI, data_dir / "mlflow" / "model-cache")

    # Face crops: the same probabilities as `emotion evaluate` computes, for bytes, base64 and arrays.
    files = fer_faces(datasets)
    for f in files:
        (tmp_path / "fer" / f.parent.name).mkdir(parents=True, exist_ok=True)
        (tmp_path / "fer" / f.parent.name / f.name).write_bytes(f.read_bytes())
    faces = load_labelled_faces(tmp_path / "fer", loaded.labels)
    expected = predict_probs(loaded.model, faces.x)
    order = [faces.paths.index(f"{f.parent.name}/{f.name}") for f in files]
    served = model.predict(pd.DataFrame({"image": [f.read_bytes() for f in files]}))
    probs = np.array([[row[label] for label in loaded.labels] for row in served["probabilities"]])
    assert np.allclose(probs, expected[order], atol=1e-5)
    assert list(served["label"]) == [loaded.labels[i] for i in expected[order].argmax(1)]
    assert set(served["face"]) == {"whole"} and all(box == [0, 0, 48, 48] for box in served["box"])
    as_text = model.predict(pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files[:4]]}))
    as_arrays = model.predict(pd.DataFrame({"image": [cv2.imread(str(f)) for f in files[:4]]}))
    assert list(as_text["label"]) == list(as_arrays["label"]) == list(served["label"][:4])

    # Whole photos: the crop stage's box, and the label `emotion evaluate` gives its crop.
    photos = [datasets / "yalefaces" / condition / f"{subject}.png" for condition, subject in YALE]
    served = model.predict(pd.DataFrame({"image": [p.read_bytes() for p in photos]}))
    for photo, (_, row) in zip(photos, served.iterrows(), strict=True):
        [crop] = crop_file(photo.parent, photo.name, tmp_path / "crops", face_mode="auto")
        assert crop.status == "ok" and row["face"] == "detected"
        assert row["box"] == [crop.face_x, crop.face_y, crop.face_w, crop.face_h]
        face = decode(read_bytes(tmp_path / "crops" / crop.face_path), mode="gray")
        from emotion_core.dataset import preprocess_face

        p = predict_probs(loaded.model, preprocess_face(face)[None])[0]
        assert row["label"] == loaded.labels[int(p.argmax())] and row["confidence"] == pytest.approx(p.max(), abs=1e-5)
    blank = model.predict(pd.DataFrame({"image": [np.full((300, 400), 128, np.uint8)]}))
    assert blank["face"][0] == "none" and blank["label"][0] is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _split(*images: bytes | str) -> bytes:
    rows = [[i if isinstance(i, str) else base64.b64encode(i).decode()] for i in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


@pytest.mark.slow
def test_mlflow_models_serve_answers_images_and_refuses_bad_input(installed, datasets):
    data_dir, uri = installed
    port = _free_port()
    env = dict(
        os.environ, MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", SHIPPED_URI, "--env-manager", "local"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "mlflow models serve did not come up in 180 s"
            time.sleep(0.5)

        from modelstore import configure

        configure(uri)
        local = mlflow.pyfunc.load_model(SHIPPED_URI)
        files = fer_faces(datasets, per_class=3)
        photos = [datasets / "yalefaces" / condition / f"{subject}.png" for condition, subject in YALE]
        images = [f.read_bytes() for f in files + photos]
        status, answer = _post(f"{base}/invocations", _split(*images))
        assert status == 200, answer
        expected = local.predict(pd.DataFrame({"image": images}))
        predictions = answer["predictions"]
        assert [p["label"] for p in predictions] == list(expected["label"])
        assert [p["box"] for p in predictions] == list(expected["box"])
        assert [p["face"] for p in predictions] == ["whole"] * len(files) + ["detected"] * len(photos)
        assert sum(predictions[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        status, answer = _post(
            f"{base}/invocations",
            json.dumps(
                {
                    "dataframe_records": [{"image": base64.b64encode(images[-1]).decode()}],
                    "params": {"face_mode": "whole"},
                }
            ).encode(),
        )
        assert status == 200 and answer["predictions"][0]["face"] == "whole"

        bad = {
            "not an image": (_split(b"this is not an image"), "not a decodable image"),
            "empty body": (b"", "Invalid input"),
            "image bomb": (_split(_png_header(100_000, 100_000)), "over the limit of"),
            "10 MB payload": (_split(b"\xff\xd8" + os.urandom(10 * 2**20)), "MB limit for one image"),
            "bad base64": (_split("***"), "empty image data"),
        }
        for name, (body, reason) in bad.items():
            status, answer = _post(f"{base}/invocations", body)
            assert 400 <= status < 500, (name, status, str(answer)[:300])
            assert reason in str(answer), (name, str(answer)[:300])
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as reply:
            assert reply.status == 200  # still up
        assert _post(f"{base}/invocations", _split(images[0]))[0] == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
