"""The train flow against a real MLflow store: run contents, registry, aliases, loading elsewhere."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from flows.pipeline import emotion_pipeline
from flows.train import train_flow
from tests.conftest import ROOT
from tests.test_flows import fer_sample

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def fer_data(datasets, tmp_path_factory):
    """A 700-image FER2013 sample taken through compress -> crop -> split."""
    base = tmp_path_factory.mktemp("fer")
    fer_sample(datasets / "fer2013", base / "input", 700)
    data = base / "data"
    emotion_pipeline(str(base / "input"), str(data), until="split", face_mode="whole", workers=2)
    return data


def test_training_logs_registers_and_loads_elsewhere(fer_data):
    result = train_flow(str(fer_data), preset="smoke", epochs=2)
    assert result["alias"] == "champion" and result["version"] == "1" and result["epochs_run"] == 2
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    params, metrics = run.data.params, run.data.metrics
    assert params["model"] == "vgg_mid" and params["labels"].split(",")[0] == "angry"
    assert params["manifest_hash"] and int(params["n_train"]) > 500 and "version.keras" in params
    assert {"test_accuracy", "test_macro_f1", "test_recall_disgust", "val_loss", "loss"} <= set(metrics)
    assert metrics["sharpness_median_train"] > 0 and "sharpness_median_test" in metrics
    assert [m.step for m in client.get_metric_history(result["run_id"], "loss")] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(result["run_id"], "report")}
    assert artifacts == {
        "report/confusion_matrix.png",
        "report/training_curves.png",
        "report/classification_report.txt",
        "report/label_map.json",
    }
    model_files = {a.path for a in client.list_artifacts(result["run_id"], "model")}
    assert {"model/MLmodel", "model/input_example.json", "model/data"} <= model_files
    assert str(client.get_model_version_by_alias("emotion-classifier", "champion").version) == "1"
    assert params["preset"] == "smoke" and run.data.tags["mlflow.source.git.commit"]

    # The registry page says what the version is, without opening the run.
    version = client.get_model_version("emotion-classifier", "1")
    assert "smoke preset: vgg_mid, 2 epochs" in version.description and "test_accuracy" in version.description
    assert version.tags["labels"].split(",") == list(params["labels"].split(","))
    assert version.tags["manifest_hash"] == params["manifest_hash"] and version.tags["n_train"] == params["n_train"]
    assert float(version.tags["test_macro_f1"]) == pytest.approx(metrics["test_macro_f1"], abs=1e-4)
    assert version.tags["preset"] == "smoke" and version.tags["model"] == "vgg_mid"

    # Its python_function flavour takes images: encoded face crops in, labels and boxes out.
    import pandas as pd

    faces = sorted((fer_data / "faces").rglob("*.png"))[:3]
    served = mlflow.pyfunc.load_model("models:/emotion-classifier/1").predict(
        pd.DataFrame({"image": [f.read_bytes() for f in faces]})
    )
    assert set(served["label"]) <= set(params["labels"].split(",")) and list(served["face"]) == ["whole"] * 3
    assert served["box"][0] == [0, 0, 48, 48]

    # Unchanged data and parameters: the registered training is reused, not repeated.
    assert train_flow(str(fer_data), preset="smoke", epochs=2)["reused"] is True

    # A second training is compared with the champion on the same test data.
    second = train_flow(str(fer_data), preset="smoke", epochs=2, retrain=True)
    assert second["version"] == "2" and second["alias"] in ("champion", "challenger")
    expected = "2" if second["alias"] == "champion" else "1"
    assert str(client.get_model_version_by_alias("emotion-classifier", "champion").version) == expected
    assert ("beats" in second["promotion"]) == (second["alias"] == "champion")

    # Another process loads the champion by alias and gets the same labels and predictions.
    from emotion_core.dataset import pack_faces
    from emotion_core.evaluate import predict_probs
    from emotion_core.manifest import read_manifest
    from modelstore import load_model

    df, info = read_manifest(fer_data / "manifest.parquet")
    x_test, _ = pack_faces(df, info.labels, fer_data).part("test")
    here = load_model("models:/emotion-classifier@champion", fer_data / "mlflow" / "model-cache")
    np.save(fer_data / "x_test.npy", x_test[:16])
    code = (
        "import json, sys, numpy as np\n"
        "from flows import environment\n"
        "import modelstore\n"
        "from emotion_core.evaluate import predict_probs\n"
        "d = sys.argv[1]\n"
        "modelstore.configure(environment.mlflow_uri(d))\n"
        "m = modelstore.load_model('models:/emotion-classifier@champion', d + '/other-cache')\n"
        "p = predict_probs(m.model, np.load(d + '/x_test.npy'))\n"
        "print(json.dumps({'labels': m.labels, 'version': m.version, 'probs': p.tolist()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fer_data)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    other = json.loads(out.stdout.strip().splitlines()[-1])
    assert tuple(other["labels"]) == here.labels == info.labels and other["version"] == expected
    assert np.allclose(other["probs"], predict_probs(here.model, x_test[:16]), atol=1e-5)


def test_an_ensemble_preset_trains_each_member_in_a_child_run_and_registers_their_average(
    fer_data, monkeypatch, capsys
):
    """Members train one after another, each in its own work folder and MLflow run (a child of the
    ensemble's, with its test-split scores); the registered model is their average and loads like
    any other; a rerun that lost the ensemble's model rebuilds it from the trained members."""
    from dataclasses import replace

    import keras

    from emotion_core.dataset import pack_faces
    from emotion_core.evaluate import predict_probs
    from emotion_core.manifest import read_manifest
    from emotion_core.train import PRESETS, ensemble, members_in_budget
    from modelstore import load_model

    member = replace(PRESETS["smoke"], model="vgg_lite", epochs=1)
    monkeypatch.setitem(PRESETS, "smoke-pair", ensemble(member, replace(member, model="vgg_small")))
    result = train_flow(str(fer_data), preset="smoke-pair", registered_name="emotion-pair")
    assert result["model"] == "vgg_lite+vgg_small" and result["kept_epoch"] is None and result["epochs_run"] == 2
    assert [(m["model"], m["epochs_run"]) for m in result["members"]] == [("vgg_lite", 1), ("vgg_small", 1)]
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.params["members"] == "vgg_lite (1 epochs), vgg_small (1 epochs)"
    assert run.data.params["model"] == "vgg_lite+vgg_small" and "epochs" not in run.data.params
    children = f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    member_runs = client.search_runs([run.info.experiment_id], children)
    assert sorted(r.data.params["model"] for r in member_runs) == ["vgg_lite", "vgg_small"]
    assert all(r.data.tags["emotion.role"] == "ensemble-member" for r in member_runs)
    assert all({"test_accuracy", "test_macro_f1", "loss"} <= set(r.data.metrics) for r in member_runs)
    lite = next(r for r in member_runs if r.data.params["model"] == "vgg_lite")
    assert run.data.metrics["member_1_test_accuracy"] == pytest.approx(lite.data.metrics["test_accuracy"])
    assert "kept_epoch" not in run.data.metrics and "test_accuracy" in run.data.metrics
    version = client.get_model_version("emotion-pair", result["version"])
    assert version.description.startswith("smoke-pair preset: the average of vgg_lite (1 epochs, kept epoch 1")
    assert version.tags["model"] == "vgg_lite+vgg_small"
    from flows.cli import print_training

    capsys.readouterr()
    print_training(result)
    printed = " ".join(capsys.readouterr().out.split())
    assert "train: the average of vgg_lite (1 epochs) and vgg_small (1 epochs); test accuracy" in printed
    assert f"member 1, vgg_lite: test_accuracy {lite.data.metrics['test_accuracy']:.3f}" in printed

    df, info = read_manifest(fer_data / "manifest.parquet")
    packed = pack_faces(df, info.labels, fer_data)
    x_test = packed.part("test")[0][:16]
    member_dirs = [fer_data / "training" / m.key(packed.key) for m in members_in_budget(PRESETS["smoke-pair"])]
    nets = [keras.saving.load_model(d / "final.keras", compile=False) for d in member_dirs]
    expected = np.mean([predict_probs(net, x_test) for net in nets], axis=0)
    registered = load_model("models:/emotion-pair@champion", fer_data / "mlflow" / "model-cache")
    assert registered.labels == info.labels and registered.model.name == "ensemble"
    assert np.allclose(predict_probs(registered.model, x_test), expected, atol=1e-5)

    ensemble_dir = fer_data / "training" / PRESETS["smoke-pair"].key(packed.key)
    (ensemble_dir / "registered.json").unlink()
    (ensemble_dir / "final.keras").unlink()
    trained = {d: (d / "final.keras").stat().st_mtime_ns for d in member_dirs}
    again = train_flow(str(fer_data), preset="smoke-pair", registered_name="emotion-pair")
    assert again["reused"] is False and again["version"] == "2" and again["run_id"] == result["run_id"]
    assert {d: (d / "final.keras").stat().st_mtime_ns for d in member_dirs} == trained
    assert len(client.search_runs([run.info.experiment_id], children)) == 2
    assert again["metrics"]["accuracy"] == pytest.approx(result["metrics"]["accuracy"])


def test_a_time_budget_cuts_the_schedule_and_says_so_in_the_run_and_registry(fer_data):
    """A budget below the reserve kept for finishing leaves room for the first epoch only."""
    from emotion_core.budget import FINISH_RESERVE_S
    from flows.cli import app

    assert FINISH_RESERVE_S > 60
    args = ["train", "-d", str(fer_data), "--preset", "smoke", "--epochs", "3", "--budget-minutes", "1"]
    result = CliRunner().invoke(app, [*args, "--registered-name", "emotion-budget"])
    assert result.exit_code == 0, result.output
    assert "1 epochs (kept 1)" in result.output
    assert "time budget: 1 epoch (cut from 3) planned for 1 min" in result.output
    client = mlflow.MlflowClient()
    version = client.get_model_version("emotion-budget", "1")
    assert "time budget: 1 epoch (cut from 3)" in version.description
    run = client.get_run(version.run_id)
    assert run.data.params["plan_epochs"] == "1" and run.data.params["budget_minutes"] == "1.0"
    assert run.data.tags["time_budget"].startswith("1 epoch (cut from 3)")


def test_evaluate_command_on_a_labelled_folder(fer_data, datasets, tmp_path):
    from flows.cli import app

    if not (fer_data / "training").exists():
        train_flow(str(fer_data), preset="smoke", epochs=1)
    source = datasets / "fer2013" / "public_test"
    for label in ("happy", "sad", "angry"):
        (tmp_path / label).mkdir()
        for f in sorted((source / label).glob("*.jpg"))[:20]:
            (tmp_path / label / f.name).symlink_to(f)
    (tmp_path / "anger").mkdir()  # a label the model does not know until it is mapped
    for f in sorted((source / "angry").glob("*.jpg"))[20:25]:
        (tmp_path / "anger" / f.name).symlink_to(f)
    (tmp_path / "joy").mkdir()
    (tmp_path / "joy" / "x.jpg").symlink_to(sorted((source / "happy").glob("*.jpg"))[0])
    runner = CliRunner()
    args = [
        "evaluate",
        "--data",
        str(tmp_path),
        "--data-dir",
        str(fer_data),
        "--json",
        "--label-map",
        "anger=angry",
        "--confusion",
        str(tmp_path / "cm.png"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["n"] == 65 and report["skipped_labels"] == {"joy": 1}
    # A 3-class set against the 7-class model: the four absent classes are named, not scored 0.
    assert set(report["per_class_recall"]) == {"happy", "sad", "angry"}
    assert report["labels_without_samples"] == ["disgust", "fear", "neutral", "surprise"]
    assert set(report) >= {"accuracy", "macro_f1", "per_class_recall", "n", "skipped_labels"}
    assert (tmp_path / "cm.png").stat().st_size > 1000
    missing = runner.invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tmp_path),
            "--data-dir",
            str(fer_data),
            "--model",
            "models:/emotion-classifier@nosuchalias",
        ],
    )
    assert missing.exit_code == 2 and "no registered model" in missing.output


def test_training_bad_input_is_one_line(tmp_path, fer_data):
    from flows.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", "--data-dir", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no manifest" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["train", "--data-dir", str(fer_data), "--tracking-uri", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "cannot reach the MLflow tracking server" in result.output
    result = runner.invoke(app, ["train", "--data-dir", str(fer_data), "--model", "nope"])
    assert result.exit_code == 2 and "unknown model" in result.output


def test_manifest_without_training_rows_is_refused(tmp_path):
    from emotion_core.manifest import ManifestInfo, from_records, write_manifest
    from flows.cli import app

    rows = [
        {"id": "1", "source_path": "a/1.jpg", "label": "a", "status": "no_face"},
        {"id": "2", "source_path": "b/2.jpg", "label": "b", "status": "corrupt"},
    ]
    write_manifest(
        from_records(rows), Path(tmp_path) / "manifest.parquet", ManifestInfo(("a", "b"), "folders", "split", "/x")
    )
    result = CliRunner().invoke(app, ["train", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no usable training rows" in result.output


def test_evaluate_warns_when_faces_are_much_blurrier_or_sharper_than_training(fer_data, datasets, tmp_path):
    """The model carries its training faces' sharpness; evaluating on another domain says so.

    The test makes its own domains (a second model trained on FER2013 faces blurred with sigma 3 px;
    evaluation sets of the same faces as they are and blurred), so it depends on no sharpness
    property of the shared data.
    """
    import cv2

    from flows.cli import app

    def blurred_copy(files, dest):
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            gray = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_GRAYSCALE)
            cv2.imwrite(str(dest / f.name), cv2.GaussianBlur(gray, (0, 0), 3))

    if not (fer_data / "training").exists():
        train_flow(str(fer_data), preset="smoke", epochs=1)
    train_root = datasets / "fer2013" / "train"
    blurred_input = tmp_path / "blurred-input"
    for label in sorted(p.name for p in train_root.iterdir() if p.is_dir()):
        blurred_copy(sorted((train_root / label).glob("*.jpg"))[:20], blurred_input / label)
    blurred_model = tmp_path / "blurred-model"
    emotion_pipeline(str(blurred_input), str(blurred_model), face_mode="whole", preset="smoke", workers=2)

    same, blurred = tmp_path / "same", tmp_path / "blurred"
    for label in ("happy", "sad"):
        files = sorted((train_root / label).glob("*.jpg"))[100:115]
        (same / label).mkdir(parents=True)
        for f in files:
            (same / label / f.name).symlink_to(f)
        blurred_copy(files, blurred / label)
    runner = CliRunner()
    reports = {}
    for name, folder, model_dir, extra in (
        ("same", same, fer_data, []),
        ("blurrier", blurred, fer_data, []),
        ("same-to-blurred-model", blurred, blurred_model, []),
        ("sharper", same, blurred_model, []),
        ("sharper-matched", same, blurred_model, ["--match-sharpness"]),
    ):
        args = ["evaluate", "--data", str(folder), "--data-dir", str(model_dir), "--json", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.output.strip().splitlines()[-1])
    for name in ("same", "same-to-blurred-model"):
        assert reports[name]["warnings"] == [] and reports[name]["matched_blur_sigma"] == 0
    assert len(reports["blurrier"]["warnings"]) == 1
    assert "blurrier than the training faces" in reports["blurrier"]["warnings"][0]
    assert len(reports["sharper"]["warnings"]) == 1
    assert "sharper than the training faces" in reports["sharper"]["warnings"][0]
    # --match-sharpness blurs them to the training faces' sharpness (here sigma 3 px, then JPEG q40).
    matched = reports["sharper-matched"]
    assert matched["warnings"] == [] and 1.5 <= matched["matched_blur_sigma"] <= 4.5
    assert matched["n"] == reports["sharper"]["n"] == 30
