"""Where the project's local Prefect and MLflow servers record themselves (pure standard library).

``emotion server start`` writes ``<data-dir>/servers/<name>.json`` (pid, URL, command) for each
server it starts; flows, ``emotion evaluate`` and the realtime client read it to talk to a server
that runs for their data directory instead of opening the embedded stores behind its back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def server_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir).resolve() / "servers"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def read_state(data_dir: str | os.PathLike, name: str) -> dict | None:
    """The state file of server ``name``, or None."""
    try:
        state = json.loads((server_dir(data_dir) / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("pid"), int) else None


def running_url(data_dir: str | os.PathLike, name: str) -> str | None:
    """URL of server ``name`` started for ``data_dir`` by ``emotion server start``, if its process lives."""
    state = read_state(data_dir, name)
    if state is None or not pid_alive(state["pid"]):
        return None
    return state.get("url")
