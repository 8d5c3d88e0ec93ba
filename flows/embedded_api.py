"""The embedded Prefect API, started by the command as a child that cannot outlive it.

Prefect's own ephemeral server is a plain subprocess: after SIGTERM or ``kill -9`` of the command
it runs on, re-parented to init. This module starts the same server (``uvicorn`` over
``prefect.server.api.server:create_app``, UI off, database under ``PREFECT_HOME``) itself, with
``PR_SET_PDEATHSIG`` so the kernel kills it the moment the command dies, in its own session so a
terminal's Ctrl-C reaches the command first (which still needs the API to record the stop), and
with its pid recorded in ``PREFECT_HOME/embedded-api.json`` so a later run stops one that an older
crash left behind (found by that pid, and only if it is this server). ``PREFECT_API_URL`` then
points at it, so every worker (process pool, local Dask cluster) reports to this one server
instead of starting its own. Pure standard library: nothing here imports Prefect.

A new home starts from a template database: the first start in a fresh home migrates its database
and registers Prefect's block types (~8 s of a ~12.5 s start on 2 cores, bench.api_start); a copy of that database is
then kept in the user's cache, one per Prefect version, and later fresh homes start from it, so
Prefect's own start-up check finds the schema current and the blocks registered (the start then
costs what a start in an existing home costs: mostly importing the server).
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from emotion_core import stopping
from emotion_core.servers import pid_alive

RECORD_NAME = "embedded-api.json"
LOG_NAME = "embedded-api.log"
APP = "prefect.server.api.server:create_app"
DB_NAME = "prefect.db"  # Prefect's default database under PREFECT_HOME
MEMO_NAME = "memo_store.toml"  # Prefect's record of the block types it registered
DB_URL_SETTINGS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


class EmbeddedApiError(RuntimeError):
    """The embedded Prefect API did not start."""


@dataclass
class EmbeddedApi:
    process: subprocess.Popen
    url: str  # the API URL, ending in /api
    record: Path

    def stop(self, timeout: float = 2.0) -> None:
        """Terminate the server (kill it after ``timeout``) and remove its record."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _remove_record(self.record, self.process.pid)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_embedded_api(pid: int) -> bool:
    try:
        return APP in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def stop_leftover(home: Path, grace: float = 3.0) -> int | None:
    """Stop the server an earlier, crashed run recorded in ``home`` (by its pid, and only if that pid
    still runs this server); returns its pid, or None when there was none."""
    record = home / RECORD_NAME
    try:
        state = json.loads(record.read_text())
        pid, owner = int(state["pid"]), int(state.get("parent") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not pid_alive(pid) or not _is_embedded_api(pid):
        record.unlink(missing_ok=True)  # gone, or the pid now belongs to another program
        return None
    if owner and owner != os.getpid() and pid_alive(owner):
        return None  # the live API of a command that is running now
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    record.unlink(missing_ok=True)
    return pid


def _remove_record(record: Path, pid: int) -> None:
    try:
        if json.loads(record.read_text()).get("pid") == pid:
            record.unlink()
    except (OSError, ValueError):
        pass


def template_dir() -> Path | None:
    """Where the template database of the installed Prefect version is kept (``EMOTION_CACHE_DIR``,
    else ``XDG_CACHE_HOME`` or ``~/.cache``, then ``emotion-pipeline``); None when the user set a
    database URL of their own, or Prefect is not installed."""
    if any(os.environ.get(name) for name in DB_URL_SETTINGS):
        return None
    try:
        version = importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        return None
    root = os.environ.get("EMOTION_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(root).expanduser() / "emotion-pipeline" / f"prefect-{version}"


def _copy_atomically(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` through a temporary file in ``dest``'s folder, then rename."""
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def seed_home(home: Path, templates: Path | None) -> bool:
    """Give a home without a database a copy of the template database (and the record of its
    registered blocks); True if it got one. A home with a database, or no template: False."""
    if templates is None or (home / DB_NAME).exists() or not (templates / DB_NAME).is_file():
        return False
    try:
        _copy_atomically(templates / DB_NAME, home / DB_NAME)
    except OSError:
        return False
    # After the database only: a record of registered blocks without them would skip registering
    # them, while a database without the record only registers them again.
    if (templates / MEMO_NAME).is_file() and not (home / MEMO_NAME).exists():
        try:
            _copy_atomically(templates / MEMO_NAME, home / MEMO_NAME)
        except OSError:
            pass
    return True


def save_template(home: Path, templates: Path | None) -> None:
    """Keep a consistent copy (SQLite's online backup) of a freshly started home's database, and its
    record of registered blocks, as the template for later fresh homes; best effort."""
    if templates is None or (templates / DB_NAME).is_file() or not (home / DB_NAME).is_file():
        return
    partial = templates / f".{DB_NAME}.{os.getpid()}.tmp"
    try:
        templates.mkdir(parents=True, exist_ok=True)
        source, target = sqlite3.connect(home / DB_NAME), sqlite3.connect(partial)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        if (home / MEMO_NAME).is_file():
            _copy_atomically(home / MEMO_NAME, templates / MEMO_NAME)
        os.replace(partial, templates / DB_NAME)  # last: the template is whole once its database is there
    except (OSError, sqlite3.Error):
        partial.unlink(missing_ok=True)


def start(home: Path, timeout: float | None = None) -> EmbeddedApi:
    """Start the embedded API with its database under ``home`` and point ``PREFECT_API_URL`` at it.

    Stops a leftover of a crashed run first; the server is stopped at exit, and killed by the
    kernel if this process dies without exiting. A home without a database starts from the
    template database, or leaves one for the next (see the module's docstring).
    """
    home.mkdir(parents=True, exist_ok=True)
    stop_leftover(home)
    templates = template_dir()
    fresh = not (home / DB_NAME).exists() and not seed_home(home, templates)
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise EmbeddedApiError("prefect is not installed")
    port = _free_port()
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env["PREFECT_HOME"] = str(home)  # its database, and its record of registered blocks
    env.pop("PREFECT_API_URL", None)
    log = open(home / LOG_NAME, "ab")  # noqa: SIM115 - the child keeps writing to it
    # flows.child_of sets PR_SET_PDEATHSIG in the child: a preexec_fn would run Python's at-fork
    # callbacks here, where a Ctrl-C handler's exception is lost (see that module)
    child_of = [sys.executable, "-m", "flows.child_of", str(os.getpid())]
    command = [*child_of, "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory", APP]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    record = home / RECORD_NAME
    record.write_text(json.dumps({"pid": process.pid, "port": port, "parent": os.getpid()}))
    api = EmbeddedApi(process, f"http://127.0.0.1:{port}/api", record)
    atexit.register(api.stop)
    limit = timeout or float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    try:
        _wait_until_healthy(api, limit)
    except BaseException:  # not answering, or stopped while starting (Ctrl-C, SIGTERM)
        api.stop()
        raise
    if fresh:
        save_template(home, templates)
    os.environ["PREFECT_API_URL"] = api.url
    return api


def _wait_until_healthy(api: EmbeddedApi, limit: float) -> None:
    deadline = time.monotonic() + limit
    while True:
        stopping.raise_if_requested()  # also a Ctrl-C whose exception a library swallowed
        try:
            with urllib.request.urlopen(f"{api.url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if api.process.poll() is not None:
            tail = (api.record.parent / LOG_NAME).read_text(errors="replace")[-500:]
            raise EmbeddedApiError(f"the embedded Prefect API exited with code {api.process.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise EmbeddedApiError(f"the embedded Prefect API did not answer within {limit:.0f} s")
        time.sleep(0.1)


def descendants(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: this process), read from ``/proc``."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_descendants() -> None:
    """SIGKILL every descendant of this process (the second Ctrl-C)."""
    for pid in descendants():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
