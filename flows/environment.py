"""Embedded defaults, applied before Prefect or MLflow is imported.

With no server configured, Prefect runs its ephemeral local API with its database under
``<data-dir>/prefect`` and MLflow uses a SQLite store under ``<data-dir>/mlflow``; any
``PREFECT_*`` or ``MLFLOW_TRACKING_URI`` the user sets wins, so the same code talks to real
servers through settings alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emotion_core.servers import running_url

DEFAULT_DATA_DIR = "emotion-data"
EMBEDDED_API_URL: str | None = None  # set when this command started its own API (no UI to point at)


def configure(data_dir: str | os.PathLike | None = None) -> None:
    """Set the embedded defaults for this process (never overriding the user's settings)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # Run logs still reach the Prefect API (and UI); the terminal shows progress bars and one-line errors.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("logging.yml")))
    if data_dir is not None and "PREFECT_API_URL" not in os.environ:
        os.environ.setdefault("PREFECT_HOME", str(Path(data_dir).resolve() / "prefect"))
        served = running_url(data_dir, "prefect")  # `emotion server start` runs one for this data dir
        if served:
            os.environ["PREFECT_API_URL"] = f"{served}/api"
    if os.environ.get("PREFECT_HOME"):
        # the ephemeral server cannot start (and only times out) when its home folder is missing
        Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    # The ephemeral server logs cancelled event flushes as errors while it shuts down; they are noise.
    logging.getLogger("prefect.server").setLevel(logging.CRITICAL)
    logging.getLogger("prefect._internal.concurrency").setLevel(logging.CRITICAL)


def mlflow_uri(data_dir: str | os.PathLike, explicit: str | None = None) -> str:
    """Tracking URI: ``explicit``, else ``MLFLOW_TRACKING_URI``, else SQLite under the data dir."""
    from modelstore.tracking import default_tracking_uri

    return default_tracking_uri(data_dir, explicit)


class NoRunErrorsOnConsole(logging.Filter):
    """Drops a flow or task run's error records (with their tracebacks) from the terminal: the
    command prints the error in one line, and the records still reach the Prefect API and UI.
    Installed on Prefect's console handler by ``flows/logging.yml``."""

    def filter(self, record: logging.LogRecord) -> bool:
        of_a_run = getattr(record, "flow_run_id", None) or getattr(record, "task_run_id", None)
        return not (of_a_run and record.levelno >= logging.ERROR)


@contextmanager
def prefect_api(data_dir: str | os.PathLike) -> Iterator[str | None]:
    """The Prefect API for this command's flows: the configured server (``PREFECT_API_URL``, or
    ``emotion server start`` for ``data_dir``), else the embedded API started here (see
    :mod:`flows.embedded_api`). Yields the URL it started, or None.

    With the embedded API, flow runs send no heartbeats: they serve a server's detection of
    crashed runs, and this API ends with the command, so they only cost time (each flow level
    waits up to a second for its heartbeat thread when it ends, Ctrl-C included)."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from .embedded_api import start

    global EMBEDDED_API_URL
    home = Path(os.environ.get("PREFECT_HOME") or Path(data_dir).resolve() / "prefect").expanduser()
    EMBEDDED_API_URL = start(home).url
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield EMBEDDED_API_URL
