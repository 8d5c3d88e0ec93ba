"""The ``emotion`` entry point. It installs the stop handlers before anything heavy is imported, so
Ctrl-C or SIGTERM even during start-up ends the command cleanly (one line, exit 128 + signal)."""

from __future__ import annotations

import os
import signal
import sys

from emotion_core import stopping


def _on_stop_signal(signum: int, _frame) -> None:
    """First Ctrl-C or SIGTERM: stop submitting work, abandon running chunks, unwind (the flow run
    is marked crashed, servers and workers stopped). A second one: kill every child and exit now."""
    if stopping.requested():
        from .embedded_api import kill_descendants

        kill_descendants()
        os._exit(128 + signum)
    stopping.request(signum)
    raise stopping.Stopped(f"stopped by {signal.Signals(signum).name}")


def main() -> None:
    """Run the ``emotion`` command line; Ctrl-C and SIGTERM stop it within seconds (see the README)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`cmd &` in a script)
        signal.signal(sig, _on_stop_signal)
    try:
        from .cli import app

        app()
    except (stopping.Stopped, KeyboardInterrupt):
        signum = stopping.signal_number() or signal.SIGINT
        print(
            f"stopped by {signal.Signals(signum).name}: finished chunks and training epochs are kept; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + signum)


if __name__ == "__main__":
    main()
