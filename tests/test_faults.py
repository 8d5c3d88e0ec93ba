"""Fault injection: kill -9 at random points of every stage, full disks, read-only folders, vanishing inputs."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotion_core.manifest import read_manifest
from tests.conftest import ROOT
from tests.test_flows import make_photo_tree

pytestmark = pytest.mark.usefixtures("prefect_harness")

KILLS = 20
QUOTA = {"compress": 5, "crop": 5, "split": 4, "train": 6}  # kills aimed at each stage, in order
STAGES = tuple(QUOTA)


def pipeline_cmd(source: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "flows", "pipeline", str(source), "-d", str(data), "--chunk-size", "8",
            "--workers", "2", "--preset", "smoke", "--epochs", "8"]  # fmt: skip


def records(data: Path, stage: str) -> int:
    folder = data / "state" / stage
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def epochs_done(data: Path) -> int:
    for state in (data / "training").glob("*/checkpoint/state.json"):
        try:
            return json.loads(state.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            return 0
    return 0


def manifest_stage(data: Path) -> str | None:
    try:
        return read_manifest(data / "manifest.parquet")[1].stage
    except Exception:  # absent, or being replaced at this instant
        return None


def killable(data: Path, stage: str, chunks: dict[str, int]) -> bool:
    """Whether a run on ``data`` still has work in ``stage`` (split runs again on every run)."""
    if stage in chunks:
        return records(data, stage) < chunks[stage]
    return not list((data / "training").glob("*/registered.json"))


def kill_once(cmd, env, data: Path, chunks: dict[str, int], target: str, rng: random.Random) -> str | None:
    """Start the pipeline, wait until ``target`` makes progress, kill -9 it a random moment later.

    Returns the stage that was running when the process died, or None if it finished first.
    """
    before = {"compress": records(data, "compress"), "crop": records(data, "crop"), "train": epochs_done(data)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if target in ("compress", "crop") and records(data, target) > before[target]:
            time.sleep(rng.uniform(0, 0.25))
            break
        if target == "split" and records(data, "crop") >= chunks["crop"] and manifest_stage(data) == "crop":
            time.sleep(rng.uniform(0, 0.4))  # split runs within a second of the crop manifest
            break
        if target == "train" and (data / "training").is_dir() and epochs_done(data) >= before["train"]:
            time.sleep(rng.uniform(0.5, 4.0))
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return None
    state = (records(data, "compress"), records(data, "crop"), manifest_stage(data), epochs_done(data))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if state[0] < chunks["compress"]:
        return "compress"
    if state[1] < chunks["crop"]:
        return "crop"
    return "split" if state[2] == "crop" else "train"


def champion_weights(data: Path) -> list[np.ndarray]:
    import keras

    done = json.loads(next((data / "training").glob("*/registered.json")).read_text())
    final = next((data / "training").glob("*/final.keras"))
    assert done["alias"] in ("champion", "challenger")
    return keras.saving.load_model(final, compile=False, safe_mode=True).get_weights()


def output_files(data: Path) -> set[str]:
    return {
        p.relative_to(data).as_posix() for d in ("compressed", "faces") for p in (data / d).rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_twenty_random_kills_end_with_the_clean_runs_manifest_and_model(yale, tmp_path):
    from prefect.settings import PREFECT_API_URL

    source = tmp_path / "input"
    make_photo_tree(source, yale, 120)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT)}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    done = subprocess.run(pipeline_cmd(source, clean), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    chunks = {stage: records(clean, stage) for stage in ("compress", "crop")}

    rng = random.Random(20261125)
    stages: Counter[str] = Counter()
    attempts = 0
    while sum(stages.values()) < KILLS and attempts < 3 * KILLS:
        attempts += 1
        open_stages = [s for s in STAGES if killable(killed, s, chunks)]
        if not open_stages:  # everything finished: a fresh chain for the remaining kills
            subprocess.run(["rm", "-rf", str(killed)], check=True)
            continue
        target = next((s for s in open_stages if stages[s] < QUOTA[s]), open_stages[-1])
        stage = kill_once(pipeline_cmd(source, killed), env, killed, chunks, target, rng)
        if stage is not None:
            stages[stage] += 1
    print(f"\nkill -9 count per stage: {dict(stages)} in {attempts} attempts")
    assert sum(stages.values()) >= KILLS and all(stages[s] >= 2 for s in STAGES), stages

    rerun = subprocess.run(pipeline_cmd(source, killed), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    clean_df, killed_df = read_manifest(clean / "manifest.parquet")[0], read_manifest(killed / "manifest.parquet")[0]
    pd.testing.assert_frame_equal(killed_df, clean_df)
    # no truncated, orphaned or temporary files: exactly the files the manifest names, byte for byte
    files = output_files(killed)
    named = {f"compressed/{p}" for p in killed_df["compressed_path"].dropna()}
    named |= {f"faces/{p}" for p in killed_df["face_path"].dropna()}
    assert files == named == output_files(clean)
    for rel in files:
        assert (killed / rel).read_bytes() == (clean / rel).read_bytes(), rel
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    for a, b in zip(champion_weights(killed), champion_weights(clean), strict=True):
        np.testing.assert_array_equal(a, b)


def test_disk_full_fails_the_file_not_the_outputs(small_tree, tmp_path, monkeypatch):
    """ENOSPC while writing: those files are recorded as write_failed; nothing half-written is left."""
    import emotion_core.imageio as imageio
    from flows.pipeline import emotion_pipeline

    data = tmp_path / "data"
    real_replace = os.replace
    state = {"left": 4}

    def full_disk(src, dst):
        if str(dst).endswith(".jpg") and "compressed" in str(dst):
            if state["left"] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            state["left"] -= 1
        return real_replace(src, dst)

    monkeypatch.setattr(imageio.os, "replace", full_disk)
    out = emotion_pipeline(str(small_tree), str(data), until="split", workers=1, chunk_size=4)
    df, _ = read_manifest(data / "manifest.parquet")
    failed = df[df["status"] == "write_failed"]
    assert len(failed) == out["compress"]["status"]["write_failed"] > 0
    assert failed["reason"].str.contains("No space left").all()
    assert not list(data.rglob("*.tmp"))
    written = {p.relative_to(data / "compressed").as_posix() for p in (data / "compressed").rglob("*.jpg")}
    assert written == set(df["compressed_path"].dropna())

    monkeypatch.setattr(imageio.os, "replace", real_replace)  # space freed: the rerun completes them
    emotion_pipeline(str(small_tree), str(data), until="split", workers=1, chunk_size=4)
    df, _ = read_manifest(data / "manifest.parquet")
    assert "write_failed" not in set(df["status"])


@pytest.fixture
def read_only_view(tmp_path):
    """``make(folder)`` returns a read-only bind mount of ``folder`` (root with CAP_SYS_ADMIN: CI's case)."""
    mounts = []

    def make(folder: Path) -> Path:
        view = tmp_path / f"ro-{len(mounts)}"
        view.mkdir()
        for cmd in (["mount", "--bind", str(folder), str(view)], ["mount", "-o", "remount,bind,ro", str(view)]):
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                subprocess.run(["umount", str(view)], capture_output=True)
                pytest.skip("cannot make a read-only bind mount here (needs root with CAP_SYS_ADMIN)")
        mounts.append(view)
        return view

    yield make
    for view in mounts:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_read_only_data_dir_is_one_line_error(small_tree, tmp_path, read_only_view):
    """A data directory on a read-only file system: a one-line error, exit 2, the manifest untouched."""
    from typer.testing import CliRunner

    from flows.cli import app

    data = tmp_path / "data"
    runner = CliRunner()
    first = runner.invoke(app, ["split", str(small_tree), "-d", str(data), "--workers", "1"])
    assert first.exit_code == 0, first.output
    before = (data / "manifest.parquet").read_bytes()
    view = read_only_view(data)
    with pytest.raises(OSError, match="Read-only"):
        (view / "probe").write_bytes(b"")
    result = runner.invoke(app, ["split", str(small_tree), "-d", str(view), "--workers", "1"])
    assert result.exit_code == 2
    assert "Read-only file system" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert (data / "manifest.parquet").read_bytes() == before


def test_input_deleted_while_the_stage_runs(small_tree, tmp_path, monkeypatch):
    """A source file removed after discovery: recorded as missing, the rest of the stage completes."""
    import emotion_core.compress as compress
    from flows.pipeline import emotion_pipeline

    victim = sorted(small_tree.rglob("사진*.jpg"))[0]
    real = compress.read_bytes

    def vanishing(path):
        if Path(path) == victim and victim.exists():
            victim.unlink()  # deleted between discovery and reading
        return real(path)

    monkeypatch.setattr(compress, "read_bytes", vanishing)
    data = tmp_path / "data"
    emotion_pipeline(str(small_tree), str(data), until="split", workers=2, chunk_size=4)
    df, _ = read_manifest(data / "manifest.parquet")
    row = df[df["source_path"] == victim.relative_to(small_tree).as_posix()].iloc[0]
    assert row["status"] == "missing" and "not found" in row["reason"]
    assert (df["status"] == "ok").sum() == 8  # the other real faces went through every stage
