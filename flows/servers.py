"""Local Prefect and MLflow servers for one data directory: start, status, stop.

``emotion server start`` runs ``prefect server start`` and ``mlflow server`` in the background,
bound to 127.0.0.1 unless told otherwise, with their databases, pid and log files under the data
directory:

    <data-dir>/prefect/prefect.db         Prefect's database (the same one the embedded API uses)
    <data-dir>/mlflow/mlflow.db           MLflow's tracking and registry store
    <data-dir>/mlflow/artifacts/          MLflow's artefacts
    <data-dir>/servers/<name>.json        pid, URL and command of a running server
    <data-dir>/servers/<name>.log         its output

While they run, commands on that data directory talk to them (see :func:`running_url`), so their
runs show up in the UIs; a user's own ``PREFECT_API_URL`` / ``MLFLOW_TRACKING_URI`` still wins.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from emotion_core.servers import pid_alive, read_state, running_url, server_dir

from .embedded_api import seed_home, template_dir

LOOPBACK = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORTS = {"prefect": 4200, "mlflow": 5000}
SERVER_NAMES = ("prefect", "mlflow")
HEALTH_PATHS = {"prefect": "/api/health", "mlflow": "/health"}


class ServerError(RuntimeError):
    """A server could not be started or stopped; the message says why in one line."""


@dataclass(frozen=True)
class ServerState:
    """What ``status`` reports for one server."""

    name: str
    url: str | None
    pid: int | None
    alive: bool
    healthy: bool
    log: Path

    def line(self) -> str:
        if self.pid is None:
            return f"{self.name}: not running"
        health = "healthy" if self.healthy else ("starting or unhealthy" if self.alive else "dead (stale pid file)")
        return f"{self.name}: {self.url}  pid {self.pid}  {health}  log {self.log}"


def healthy(name: str, url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + HEALTH_PATHS[name], timeout=timeout) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "localhost") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


def _command(name: str, data_dir: Path, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env["MLFLOW_ENABLE_TELEMETRY"] = "false"
    if name == "prefect":
        home = data_dir / "prefect"
        home.mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(home)
        env.pop("PREFECT_API_URL", None)  # the server itself must not point at another API
        seed_home(home, template_dir())  # a new data dir's database: the template's, already migrated
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
        return cmd + ["--analytics-off"], env
    store = data_dir / "mlflow"
    (store / "artifacts").mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", str(store / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    return cmd, env


def start(
    data_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    ports: dict[str, int] | None = None,
    names: tuple[str, ...] = SERVER_NAMES,
    timeout: float = 120.0,
) -> list[ServerState]:
    """Start the servers in the background and wait until each answers its health check."""
    data_dir = Path(data_dir).resolve()
    folder = server_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ports = {**DEFAULT_PORTS, **(ports or {})}
    started = []
    for name in names:
        url = running_url(data_dir, name)
        if url:
            started.append(name)
            continue  # already running for this data dir: nothing to do
        if not _port_free(host, ports[name]):
            raise ServerError(f"port {ports[name]} on {host} is in use; choose another with --{name}-port")
        cmd, env = _command(name, data_dir, host, ports[name])
        log = folder / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        state = {"pid": proc.pid, "url": _url(host, ports[name]), "host": host, "port": ports[name], "command": cmd}
        (folder / f"{name}.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        started.append(name)
    deadline = time.monotonic() + timeout
    for name in started:
        state = read_state(data_dir, name) or {}
        while not healthy(name, state.get("url", "")):
            if not pid_alive(state.get("pid", -1)):
                tail = _log_tail(folder / f"{name}.log")
                (folder / f"{name}.json").unlink(missing_ok=True)
                raise ServerError(f"the {name} server exited while starting: {tail} (log: {folder / name}.log)")
            if time.monotonic() > deadline:
                raise ServerError(f"the {name} server did not answer within {timeout:.0f} s (log: {folder / name}.log)")
            time.sleep(0.5)
    return status(data_dir)


def _log_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def status(data_dir: str | os.PathLike) -> list[ServerState]:
    """Each server's pid, URL, whether its process lives and whether it answers its health check."""
    out = []
    for name in SERVER_NAMES:
        state = read_state(data_dir, name)
        log = server_dir(data_dir) / f"{name}.log"
        if not state:
            out.append(ServerState(name, None, None, False, False, log))
            continue
        alive = pid_alive(state["pid"])
        out.append(ServerState(name, state["url"], state["pid"], alive, alive and healthy(name, state["url"]), log))
    return out


def stop(data_dir: str | os.PathLike, timeout: float = 20.0) -> list[str]:
    """Stop the servers (SIGTERM to their process groups, SIGKILL after ``timeout``); returns what was stopped."""
    stopped = []
    for name in SERVER_NAMES:
        path = server_dir(data_dir) / f"{name}.json"
        state = read_state(data_dir, name)
        if not state:
            continue
        pid = state["pid"]
        if pid_alive(pid):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid_alive(pid):
                _signal_group(pid, signal.SIGKILL)
            stopped.append(name)
        _reap(pid)
        path.unlink(missing_ok=True)
    return stopped


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the server and the workers it spawned
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
