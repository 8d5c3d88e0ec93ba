"""Stopping on request: Ctrl-C (SIGINT), SIGTERM and kill -9 at seeded random moments of real runs.

Each command runs on the embedded defaults (its own Prefect API), so the process tree checked is the
one a user gets. After every signal: the exit code and time, every process the command had started
(read from /proc at the moment of the signal) gone, and finally a rerun ends with the clean run's
manifest and files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pandas as pd
import pytest

from emotion_core.manifest import read_manifest
from flows.embedded_api import RECORD_NAME, descendants
from tests.conftest import ROOT
from tests.test_faults import epochs_done, output_files, records
from tests.test_flows import fer_sample

DATA_STAGE_LIMIT_S = 5.0
TRAINING_LIMIT_S = 10.0
CHILDREN_GONE_S = 5.0


def clean_env() -> dict[str, str]:
    """The user's environment: no Prefect server configured, so each command starts its own API."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def split_cmd(source: Path, data: Path, runner: str = "threads") -> list[str]:
    return [sys.executable, "-m", "flows", "pipeline", str(source), "-d", str(data), "--until", "split",
            "--face-mode", "whole", "--chunk-size", "40", "--workers", "2", "--task-runner", runner]  # fmt: skip


#: Enough epochs (each well under a second on the sample) that three signals, each sent within half a
#: second after a run's first finished epoch, all land mid-training, before the last epoch.
TRAIN_EPOCHS = 16


def train_cmd(data: Path) -> list[str]:
    return [sys.executable, "-m", "flows", "train", "-d", str(data), "--preset", "smoke", "--epochs", str(TRAIN_EPOCHS)]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def signal_once(cmd, data: Path, moment: str, sig: int, rng: random.Random, log: Path) -> dict | None:
    """Start ``cmd``, wait for ``moment``, send ``sig`` a random instant later; None if it finished first."""
    before = {"compress": records(data, "compress"), "crop": records(data, "crop"), "train": epochs_done(data)}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=clean_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    started, deadline = time.monotonic(), time.monotonic() + 240
    wait = rng.uniform(0.5, 3.0)  # start-up: imports, the embedded API starting
    while proc.poll() is None and time.monotonic() < deadline:
        if moment == "startup" and time.monotonic() - started > wait:
            break
        if moment in ("compress", "crop") and records(data, moment) > before[moment]:
            time.sleep(rng.uniform(0, 0.3))
            break
        if moment == "train" and epochs_done(data) > before["train"]:
            time.sleep(rng.uniform(0.05, 0.5))
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        return None
    tree = descendants(proc.pid)
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    exited = time.monotonic() - sent
    while [p for p in tree if alive(p)] and time.monotonic() - sent < exited + CHILDREN_GONE_S:
        time.sleep(0.05)
    return {"moment": moment, "rc": rc, "exit_s": exited, "children": len(tree), "left": [p for p in tree if alive(p)]}


def check_stop(result: dict, sig: int, log: Path, limit: float) -> None:
    where = f"{signal.Signals(sig).name} at {result['moment']}"
    assert not result["left"], f"{where}: processes left behind: {result['left']}"
    if sig == signal.SIGKILL:
        assert result["rc"] == -signal.SIGKILL, where
        return
    text = log.read_text(errors="replace")
    assert result["rc"] == 128 + sig, f"{where}: exit code {result['rc']}\n{text[-1500:]}"
    assert result["exit_s"] < limit, f"{where}: took {result['exit_s']:.1f} s to exit"
    assert f"stopped by {signal.Signals(sig).name}" in text and "rerun the same command to resume" in text, where
    assert "Traceback" not in text, f"{where}:\n{text[-2000:]}"


def assert_same_outputs(data: Path, clean: Path) -> None:
    pd.testing.assert_frame_equal(
        read_manifest(data / "manifest.parquet")[0], read_manifest(clean / "manifest.parquet")[0]
    )
    files = output_files(data)
    assert files == output_files(clean)
    for rel in files:
        assert (data / rel).read_bytes() == (clean / rel).read_bytes(), rel
    assert not [p for p in data.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]
    assert not (data / "prefect" / RECORD_NAME).exists()  # the API's record goes with it


@pytest.fixture(scope="module")
def source_and_clean(datasets, tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("stopping")
    fer_sample(datasets / "fer2013", base / "input", 700)
    clean = base / "clean"
    done = subprocess.run(split_cmd(base / "input", clean), env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return base / "input", clean


@pytest.mark.slow
def test_signals_at_random_moments_stop_in_seconds_and_leave_nothing(source_and_clean, tmp_path):
    source, clean = source_and_clean
    rng = random.Random(20261201)
    sent = []
    # Data stages: each moment once, the two signals in turn (one handler serves both: flows/entry.py),
    # on one chain of runs. kill -9 there: its outputs are checked by tests/test_faults.py's twenty kills,
    # the processes it leaves (none) by test_worker_processes_stop_with_the_command and the API's own test
    data = tmp_path / "data-stages"
    for sig, moment in ((signal.SIGTERM, "startup"), (signal.SIGINT, "compress"), (signal.SIGTERM, "crop")):
        log = tmp_path / f"{signal.Signals(sig).name}-{moment}.log"
        result = signal_once(split_cmd(source, data), data, moment, sig, rng, log)
        if result is None:
            continue  # finished before the moment came
        check_stop(result, sig, log, DATA_STAGE_LIMIT_S)
        sent.append((sig, moment))
    rerun = subprocess.run(split_cmd(source, data), env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_outputs(data, clean)

    # Training: each signal mid-epoch; finished epochs are kept, and the last run completes the training.
    data = tmp_path / "training"
    subprocess.run(["cp", "-a", str(clean), str(data)], check=True)
    kept = 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        log = tmp_path / f"train-{signal.Signals(sig).name}.log"
        result = signal_once(train_cmd(data), data, "train", sig, rng, log)
        if result is None:
            break
        check_stop(result, sig, log, TRAINING_LIMIT_S)
        assert epochs_done(data) >= max(kept, 1)  # the last finished epoch is kept
        kept = epochs_done(data)
        sent.append((sig, "train"))
    done = subprocess.run(train_cmd(data), env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(next((data / "training").glob("*/registered.json")).read_text())
    assert record["epochs_run"] == TRAIN_EPOCHS
    print(f"\nsignals sent: {[(signal.Signals(s).name, m) for s, m in sent]}")
    assert len(sent) >= 5 and {s for s, _ in sent} >= {signal.SIGINT, signal.SIGTERM, signal.SIGKILL}, sent


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["processes", "dask"])
def test_worker_processes_stop_with_the_command(runner, source_and_clean, tmp_path):
    source, clean = source_and_clean
    rng = random.Random(runner)
    data = tmp_path / runner
    for sig, moment in ((signal.SIGINT, "compress"), (signal.SIGKILL, "crop")):
        log = tmp_path / f"{runner}-{moment}.log"
        result = signal_once(split_cmd(source, data, runner), data, moment, sig, rng, log)
        assert result is not None, f"{runner} finished before {moment}"
        assert result["children"] >= 2, result  # the API and the workers were running
        check_stop(result, sig, log, DATA_STAGE_LIMIT_S)
    rerun = subprocess.run(split_cmd(source, data, runner), env=clean_env(), cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_outputs(data, clean)


def test_a_stop_request_ends_process_pool_workers_mid_chunk():
    """Workers watch the command's stop request: a chunk that would run 60 s ends within seconds."""
    import concurrent.futures
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    from emotion_core import stopping

    try:
        pool = concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=stopping.exit_with_parent, initargs=(stopping.worker_stop_event(),),
        )  # fmt: skip
        future = pool.submit(time.sleep, 60)
        time.sleep(0.5)  # started: the worker is up and holds the chunk
        stopping.request(signal.SIGINT)
        sent = time.monotonic()
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=10)
        assert time.monotonic() - sent < 5
        pool.shutdown()
    finally:
        stopping.reset()
    assert not stopping.worker_stop_event().is_set()  # a reset clears it for the next pool


def test_a_server_left_by_a_crash_is_stopped_by_the_next_run(tmp_path):
    """A record naming a live API whose command is gone: the next start stops it, by that pid."""
    from flows.embedded_api import start, stop_leftover

    home = tmp_path / "prefect"
    api = start(home)
    pid = api.process.pid
    record = json.loads((home / RECORD_NAME).read_text())
    (home / RECORD_NAME).write_text(json.dumps({**record, "parent": 999_999_999}))  # its command died
    assert stop_leftover(home) == pid and not alive(pid)
    api.stop()
    (home / RECORD_NAME).write_text(json.dumps({"pid": os.getpid(), "parent": 999_999_999}))
    assert stop_leftover(home) is None and alive(os.getpid())  # a pid that is not the API is never signalled


_START_API_AND_WAIT = """
import json, os, sys, time
from pathlib import Path
from flows.embedded_api import start
calls = []
os.register_at_fork(before=lambda: calls.append("before"), after_in_parent=lambda: calls.append("parent"))
api = start(Path(sys.argv[1]))
print(json.dumps({"at_fork_calls": calls, "api": api.process.pid}), flush=True)
time.sleep(60)
"""


def test_the_api_starts_without_python_code_around_the_fork_and_dies_with_the_command(tmp_path):
    """A Ctrl-C handled in an at-fork callback is lost (and once left logging's lock held, so the
    command hung): the API is spawned without any, and still dies when its command is killed."""
    cmd = [sys.executable, "-c", _START_API_AND_WAIT, str(tmp_path / "prefect")]
    proc = subprocess.Popen(cmd, env=clean_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert started["at_fork_calls"] == []
    deadline = time.monotonic() + CHILDREN_GONE_S
    while alive(started["api"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(started["api"]), "the API outlived its command"


def test_a_stop_request_while_the_api_starts_stops_it(tmp_path):
    """A Ctrl-C whose exception was lost (the request stands): starting the API raises Stopped
    instead of waiting for it, and leaves neither the server nor its record."""
    from emotion_core import stopping
    from flows.embedded_api import _is_embedded_api, start

    before = {p for p in descendants() if _is_embedded_api(p)}
    stopping.request(signal.SIGINT)
    try:
        with pytest.raises(stopping.Stopped):
            start(tmp_path / "prefect")
    finally:
        stopping.reset()
    assert {p for p in descendants() if _is_embedded_api(p) and alive(p)} <= before
    assert not (tmp_path / "prefect" / RECORD_NAME).exists()


@pytest.mark.slow
def test_ctrl_c_on_realtime_keeps_the_video_and_events_valid(yale, tmp_path):
    from tests.test_realtime import register_model, two_face_video

    uri = register_model(tmp_path / "store")
    video = tmp_path / "in.mp4"
    two_face_video(yale, video, frames=400)
    out, events = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime", "--source", str(video), "--tracking-uri", uri, "-d", str(tmp_path / "d")]
        + ["--output", str(out), "--events", str(events)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while (not events.exists() or events.stat().st_size < 2000) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=DATA_STAGE_LIMIT_S)
    lines = events.read_text().splitlines()
    assert lines and all(json.loads(line)["label"] for line in lines)  # whole lines only
    frames = int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert 0 < frames < 400  # stopped part-way, and the file is a playable MP4
    ok, frame = cv2.VideoCapture(str(out)).read()
    assert ok and frame.shape == (480, 640, 3)
