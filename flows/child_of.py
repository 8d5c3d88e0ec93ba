"""Run a Python module as a child that dies with the process that started it.

``python -m flows.child_of PARENT_PID MODULE ARGS...`` asks the kernel to kill this process when
``PARENT_PID`` dies (Linux ``PR_SET_PDEATHSIG``; a no-op elsewhere), exits at once if that process
is already gone, then runs ``MODULE`` like ``python -m MODULE ARGS...``. It replaces a
``preexec_fn``: with one, ``subprocess`` runs Python's at-fork callbacks in the parent, and a
Ctrl-C handled inside one of them (``logging``'s lock release) was swallowed and left the logging
lock held, so the command hung instead of stopping. Pure standard library, imported by nothing.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> None:
    parent, module, args = int(argv[0]), argv[1], argv[2:]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
