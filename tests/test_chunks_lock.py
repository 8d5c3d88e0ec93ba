import os
import subprocess
import sys
import time

import pytest

from emotion_core.chunks import ChunkRecords, chunk_key, file_fingerprints, make_chunks, top_folder
from emotion_core.lock import DataDirBusy, data_dir_lock


def test_make_chunks_never_mixes_folders_and_balances_sizes():
    paths = [f"a/{i}.jpg" for i in range(201)] + [f"b/{i}.jpg" for i in range(5)]
    chunks = make_chunks(paths, top_folder, chunk_size=200)
    assert [len(c.paths) for c in chunks] == [101, 100, 5]
    assert all(len({top_folder(p) for p in c.paths}) == 1 for c in chunks)
    assert sorted(p for c in chunks for p in c.paths) == sorted(paths)
    assert chunks[0].name == "a[0:101]"


def test_make_chunks_shrinks_to_keep_workers_busy():
    paths = [f"a/{i}.jpg" for i in range(100)]
    assert len(make_chunks(paths, top_folder, 200, min_chunks=4)) == 4
    assert len(make_chunks(paths[:20], top_folder, 200, min_chunks=4)) == 2  # not below 16 files a chunk
    with pytest.raises(ValueError):
        make_chunks(paths, top_folder, 0)


def test_chunk_key_follows_params_and_file_changes(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"1")
    fp = file_fingerprints(tmp_path, ["x.jpg", "gone.jpg"])
    assert fp[1] == ("gone.jpg", -1, 0)
    key = chunk_key("compress", {"quality": 40}, fp)
    assert key == chunk_key("compress", {"quality": 40}, file_fingerprints(tmp_path, ["x.jpg", "gone.jpg"]))
    assert key != chunk_key("compress", {"quality": 50}, fp)
    assert key != chunk_key("crop", {"quality": 40}, fp)
    (tmp_path / "x.jpg").write_bytes(b"22")
    assert key != chunk_key("compress", {"quality": 40}, file_fingerprints(tmp_path, ["x.jpg", "gone.jpg"]))


def test_chunk_records_roundtrip_and_ignore_garbage(tmp_path):
    records = ChunkRecords(tmp_path, "crop")
    assert records.get("k") is None
    records.put("k", "a[0:2]", [{"x": 1}, {"x": None}])
    assert records.get("k") == [{"x": 1}, {"x": None}]
    (records.folder / "bad.json").write_text("{truncat")
    assert records.get("bad") is None


def test_lock_is_reentrant_and_excludes_other_processes(tmp_path):
    code = (
        "import sys; from emotion_core.lock import data_dir_lock, DataDirBusy\n"
        "try:\n    data_dir_lock(sys.argv[1]).__enter__()\nexcept DataDirBusy as e:\n    print(e); sys.exit(3)\n"
    )
    with data_dir_lock(tmp_path):
        with data_dir_lock(tmp_path):
            pass
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert other.returncode == 3
        assert f"pid {os.getpid()}" in other.stdout
    free = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert free.returncode == 0, free.stdout + free.stderr


def test_lock_released_when_holder_is_killed(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from emotion_core.lock import data_dir_lock\n"
            "with data_dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DataDirBusy):
        with data_dir_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    with data_dir_lock(tmp_path):
        pass
