"""The embedded Prefect API's template database: a fresh home starts from a migrated copy."""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.request

import pytest

from flows.embedded_api import DB_NAME, DB_URL_SETTINGS, MEMO_NAME, save_template, seed_home, start, template_dir


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A template cache of the test's own, no database URL of the user's, and PREFECT_API_URL
    (which a start sets) restored afterwards."""
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    for name in DB_URL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    before = os.environ.get("PREFECT_API_URL")
    yield template_dir()
    if before is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = before


def rows(db, sql: str) -> list:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def block_types(api_url: str) -> list[str]:
    request = urllib.request.Request(f"{api_url}/block_types/filter", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return [block["slug"] for block in json.loads(reply.read())]


def test_a_fresh_home_leaves_a_template_and_the_next_fresh_home_starts_from_it(tmp_path, cache):
    assert cache == tmp_path / "cache" / "emotion-pipeline" / cache.name and cache.name.startswith("prefect-3.")
    start(tmp_path / "first").stop()
    # the template: the migrated schema and the registered block types, no runs
    assert rows(cache / DB_NAME, "select version_num from alembic_version")
    assert rows(cache / DB_NAME, "select count(*) from block_type")[0][0] > 10
    assert rows(cache / DB_NAME, "select count(*) from flow_run") == [(0,)]
    assert (cache / MEMO_NAME).read_text() == (tmp_path / "first" / MEMO_NAME).read_text()

    second = tmp_path / "second"
    second.mkdir()
    assert seed_home(second, cache)
    assert (second / MEMO_NAME).is_file()
    api = start(second)  # Prefect's own start-up check accepts the copy and serves from it
    try:
        assert "local-file-system" in block_types(api.url)
    finally:
        api.stop()
    assert not list(second.glob(".*.tmp")) and not list(cache.glob(".*.tmp"))


def test_a_home_with_a_database_is_never_seeded(tmp_path, cache):
    home, cache_db = tmp_path / "home", cache / DB_NAME
    home.mkdir()
    cache.mkdir(parents=True)
    with sqlite3.connect(cache_db) as conn:
        conn.execute("create table template (x)")
    (home / DB_NAME).write_bytes(b"the user's runs")
    assert not seed_home(home, cache)
    assert (home / DB_NAME).read_bytes() == b"the user's runs"
    save_template(home, cache)  # a template is kept, not replaced
    assert rows(cache_db, "select name from sqlite_master") == [("template",)]


def test_no_template_without_one_or_with_the_users_own_database(tmp_path, cache, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    assert not seed_home(home, cache) and not list(home.iterdir())  # none saved yet
    assert not seed_home(home, None)
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert template_dir() is None


def test_a_failed_seed_leaves_no_record_of_blocks_without_their_database(tmp_path, cache, monkeypatch):
    """Prefect skips registering blocks its record says are registered: a seed that could not copy
    the database must not leave that record behind, nor a partial file."""
    import shutil

    cache.mkdir(parents=True)
    (cache / DB_NAME).write_bytes(b"template")
    (cache / MEMO_NAME).write_text('block_auto_registration = "key"\n')
    home = tmp_path / "home"
    home.mkdir()
    copy = shutil.copyfile

    def failing_copy(source, dest, *args, **kwargs):
        if str(source).endswith(DB_NAME):
            raise OSError("disk full")
        return copy(source, dest, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", failing_copy)
    assert not seed_home(home, cache)
    assert not list(home.iterdir())
    monkeypatch.setattr(shutil, "copyfile", copy)
    assert seed_home(home, cache)
    assert (home / DB_NAME).read_bytes() == b"template" and (home / MEMO_NAME).is_file()
