"""Flow tests: the real Prefect flows on generated trees and on the real datasets."""

from pathlib import Path

import cv2
import pandas as pd
import pytest
from typer.testing import CliRunner

from emotion_core.manifest import read_manifest
from flows.pipeline import emotion_pipeline
from flows.stages import compress_flow, crop_flow
from tests.conftest import jpeg_bytes, photo_with_face

pytestmark = pytest.mark.usefixtures("prefect_harness")


def by_name(df: pd.DataFrame) -> dict[str, pd.Series]:
    return {Path(p).name: row for p, (_, row) in zip(df["source_path"], df.iterrows(), strict=True)}


def test_pipeline_on_a_tree_with_bad_files(small_tree, tmp_path):
    data = tmp_path / "data"
    out = emotion_pipeline(str(small_tree), str(data), until="split", workers=2, chunk_size=4)
    df, info = read_manifest(data / "manifest.parquet")
    assert info.labels == ("pleasure", "anger", "neutrality") and info.layout == "aihub" and info.stage == "split"
    rows = by_name(df)
    assert len(df) == 13
    assert rows["잘림 (1).jpg"]["status"] == "corrupt"
    assert rows["빈 파일 (1).jpg"]["status"] == "empty"
    assert rows["텍스트 (1).jpg"]["status"] == "not_image"
    assert rows["얼굴 없음 (1).jpg"]["status"] == "no_face"
    good = df[df["source_path"].str.contains("사진")]
    assert (good["status"] == "ok").all() and len(good) == 9
    assert sorted(good["label"].value_counts().items()) == [("anger", 3), ("neutrality", 3), ("pleasure", 3)]
    assert good["split"].notna().all() and df.loc[df["status"] != "ok", "split"].isna().all()
    for face in good["face_path"]:
        crop = cv2.imread(str(data / "faces" / face), cv2.IMREAD_UNCHANGED)
        assert crop is not None and crop.ndim == 2
    assert out["compress"]["status"]["ok"] == 10  # the photo without a face compresses fine
    assert out["compress"]["bytes_out"] < out["compress"]["bytes_in"]
    assert not list(data.rglob("*.tmp"))

    again = emotion_pipeline(str(small_tree), str(data), until="split", workers=2, chunk_size=4)
    assert again["compress"]["chunks_cached"] == again["compress"]["chunks"]
    assert again["crop"]["chunks_cached"] == again["crop"]["chunks"]
    pd.testing.assert_frame_equal(read_manifest(data / "manifest.parquet")[0], df)


def test_stage_flows_keep_the_manifest_current(small_tree, tmp_path):
    data = tmp_path / "data"
    compress_flow(str(small_tree), str(data), workers=2)
    df, info = read_manifest(data / "manifest.parquet")
    assert info.stage == "compress" and df["face_path"].isna().all() and not (data / "faces").exists()
    # Temporary files of writers killed mid-write (a done-record, the manifest) are swept by the
    # next stage run, under the data-directory lock.
    litter = [data / "state" / "compress" / ".0123.json.ab12.tmp", data / ".manifest.parquet.cd34.tmp"]
    litter.append(data / "state" / "crop" / ".4567.json.ef56.tmp")
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    crop_flow(str(data), face_mode="detect", workers=2)
    df, info = read_manifest(data / "manifest.parquet")
    assert info.stage == "crop" and df["faces_found"].notna().sum() == 10 and df["split"].isna().all()
    assert not litter[1].exists() and not litter[2].exists()  # the crop stage's own and the manifest's
    compress_flow(str(small_tree), str(data), workers=2)  # (its rerun skips every finished chunk)
    assert not list(data.rglob("*.tmp"))


def test_yale_faces_are_found_with_boxes_on_the_face(yale, tmp_path):
    data = tmp_path / "data"
    emotion_pipeline(str(yale), str(data), until="crop", workers=2)
    df, _ = read_manifest(data / "manifest.parquet")
    assert len(df) == 164
    found = df[df["status"] == "ok"]
    assert len(found) >= 160
    # An independent reference: another cascade on the full-resolution original.
    reference = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    agree = 0
    for row in found.itertuples():
        gray = cv2.imread(str(yale / row.source_path), cv2.IMREAD_GRAYSCALE)
        ref = reference.detectMultiScale(gray, 1.1, 5, minSize=(60, 60))
        if len(ref):
            rx, ry, rw, rh = max(ref, key=lambda b: b[2] * b[3])
            ix = max(0, min(row.face_x + row.face_w, rx + rw) - max(row.face_x, rx))
            iy = max(0, min(row.face_y + row.face_h, ry + rh) - max(row.face_y, ry))
            inter = ix * iy
            agree += inter / (row.face_w * row.face_h + rw * rh - inter) >= 0.5
    assert agree >= 150, f"only {agree} boxes agree with the reference detector"


def fer_sample(fer: Path, dest: Path, n: int) -> dict[str, int]:
    """Link an n-image stratified sample of FER2013/train into dest/<label>/; returns counts."""
    classes = sorted(p.name for p in (fer / "train").iterdir() if p.is_dir())
    files = {c: sorted((fer / "train" / c).glob("*.jpg")) for c in classes}
    total = sum(len(v) for v in files.values())
    counts = {}
    for c in classes:
        k = max(1, round(n * len(files[c]) / total))
        (dest / c).mkdir(parents=True)
        for f in files[c][:k]:
            (dest / c / f.name).symlink_to(f)
        counts[c] = k
    return counts


def test_fer2013_sample_through_compress_crop_split(datasets, tmp_path):
    """Through the CLI, on a root whose class folders are symbolic links (followed)."""
    from flows.cli import app

    counts = fer_sample(datasets / "fer2013", tmp_path / "sample", 1000)
    for c in counts:
        (tmp_path / "fer" / c).parent.mkdir(exist_ok=True)
        (tmp_path / "fer" / c).symlink_to(tmp_path / "sample" / c, target_is_directory=True)
    data = tmp_path / "data"
    args = ["split", str(tmp_path / "fer"), "-d", str(data), "--face-mode", "whole", "--workers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    df, info = read_manifest(data / "manifest.parquet")
    assert info.layout == "folders" and info.labels == tuple(sorted(counts))
    assert len(df) == sum(counts.values()) and abs(len(df) - 1000) <= 7
    assert df["label"].value_counts().to_dict() == counts
    assert (df["label"] == df["source_path"].str.split("/").str[0]).all()
    usable = df[df["status"] == "ok"]
    assert len(usable) + int((df["status"] == "label_conflict").sum()) == len(df)
    assert ((usable["face_w"] == 48) & (usable["face_h"] == 48)).all()
    shares = usable["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.8) < 0.02 and abs(shares["val"] - 0.1) < 0.02


def test_cli_errors_are_one_line(tmp_path):
    from flows.cli import app

    runner = CliRunner()
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["pipeline", str(tmp_path / "empty"), "-d", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "no image files found" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["split", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output


def make_photo_tree(root: Path, yale: Path, n: int) -> None:
    faces = sorted(yale.glob("*/*.png"))
    for i in range(n):
        folder = root / ("기쁨_TRAIN_1", "슬픔_TRAIN_1")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        gray = cv2.imread(str(faces[i % len(faces)]), cv2.IMREAD_GRAYSCALE)
        photo = photo_with_face(gray, seed=i, size=(960, 1280), scale=3.0)
        (folder / f"photo ({i}).jpg").write_bytes(jpeg_bytes(photo))


@pytest.mark.slow
def test_dask_runner_gives_the_same_manifest_as_threads(small_tree, tmp_path):
    emotion_pipeline(str(small_tree), str(tmp_path / "threads"), until="crop", workers=2, chunk_size=4)
    emotion_pipeline(str(small_tree), str(tmp_path / "dask"), until="crop", workers=2, chunk_size=4, task_runner="dask")
    pd.testing.assert_frame_equal(
        read_manifest(tmp_path / "dask" / "manifest.parquet")[0],
        read_manifest(tmp_path / "threads" / "manifest.parquet")[0],
    )


@pytest.fixture
def crop_calls(monkeypatch):
    """Record every crop_file call; ``fail`` maps a path to how many of its first calls raise."""
    import tasks.crop

    state = {"calls": [], "fail": {}}
    real = tasks.crop.crop_file

    def counting(root, rel, *args, **kwargs):
        state["calls"].append(rel)
        if state["fail"].get(rel, 0) > 0:
            state["fail"][rel] -= 1
            raise RuntimeError(f"injected fault on {rel}")
        return real(root, rel, *args, **kwargs)

    monkeypatch.setattr(tasks.crop, "crop_file", counting)
    return state


def test_a_failed_chunk_is_the_only_work_a_rerun_does(small_tree, tmp_path, crop_calls):
    from flows.runner import StageFailed

    clean = tmp_path / "clean"
    emotion_pipeline(str(small_tree), str(clean), until="split", workers=2, chunk_size=4)
    crop_calls["calls"].clear()

    data = tmp_path / "data"
    compress_flow(str(small_tree), str(data), workers=2, chunk_size=4)
    df, _ = read_manifest(data / "manifest.parquet")
    victim = sorted(df.loc[df["status"] == "ok", "compressed_path"])[4]
    crop_calls["fail"][victim] = 2  # the first attempt and Prefect's retry both fail
    with pytest.raises(StageFailed, match="1 of .* chunks failed .*injected fault"):
        crop_flow(str(data), workers=2, chunk_size=4)
    first_run = list(crop_calls["calls"])
    assert first_run.count(victim) == 2  # retried once by Prefect within the run
    crop_calls["calls"].clear()

    out = emotion_pipeline(str(small_tree), str(data), until="split", workers=2, chunk_size=4)
    rerun = crop_calls["calls"]
    assert victim in rerun and out["crop"]["chunks"] - out["crop"]["chunks_cached"] == 1
    # only the failed chunk's files ran again: none of the files whose chunks finished
    finished = set(first_run) - set(rerun)
    assert finished and not finished & set(rerun) and len(rerun) <= 4
    pd.testing.assert_frame_equal(
        read_manifest(data / "manifest.parquet")[0], read_manifest(clean / "manifest.parquet")[0]
    )


def test_a_chunk_that_fails_once_is_retried_alone(small_tree, tmp_path, crop_calls):
    data = tmp_path / "data"
    compress_flow(str(small_tree), str(data), workers=2, chunk_size=4)
    df, _ = read_manifest(data / "manifest.parquet")
    victim = sorted(df.loc[df["status"] == "ok", "compressed_path"])[0]
    crop_calls["fail"][victim] = 1
    out = crop_flow(str(data), workers=2, chunk_size=4)
    calls = crop_calls["calls"]
    assert out["status"].get("ok", 0) >= 9 and calls.count(victim) == 2
    repeated = {p for p in calls if calls.count(p) > 1}
    assert repeated == {victim}  # the retry redid the failed file's chunk up to the failure, nothing else


def test_pipeline_command_passes_training_overrides_to_the_train_stage(tmp_path, monkeypatch):
    """``emotion pipeline --learning-rate/--optimizer`` reach the training; the defaults leave the preset's."""
    import flows.cli as cli

    calls = []
    monkeypatch.setattr(cli, "_run_pipeline", lambda root, data, until, **params: calls.append(params))
    base = ["pipeline", str(tmp_path), "-d", str(tmp_path / "data")]
    for extra in ([], ["--learning-rate", "0.002", "--optimizer", "sgd"]):
        result = CliRunner().invoke(cli.app, base + extra)
        assert result.exit_code == 0, result.output
    assert [(c["learning_rate"], c["optimizer"]) for c in calls] == [(None, None), (0.002, "sgd")]
    assert CliRunner().invoke(cli.app, base + ["--optimizer", "rmsprop"]).exit_code != 0
