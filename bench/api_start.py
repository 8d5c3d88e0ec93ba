"""The embedded Prefect API's start in a fresh data directory: without and with the template database.

    python -m bench.api_start [--rounds 3] [--json F]

Every command on the embedded defaults starts its own Prefect API (``flows.embedded_api``); in a
new data directory that API used to migrate a new database and register Prefect's block types
first. Measured back to back, each start in a fresh process: a fresh home with no template (an empty
cache: what the first command ever run pays), a fresh home seeded from the template (every later
new data directory), and a home that already has its database (every later command in the same
data directory). Then one whole command, ``emotion pipeline yalefaces --until split`` into a new
data directory, without and with the template. Medians; ratios against the no-template start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.data_stages import datasets_dir

_START = """
import sys, time
from pathlib import Path
from flows import environment
environment.configure()
from flows.embedded_api import start
began = time.perf_counter()
start(Path(sys.argv[1])).stop()
print(time.perf_counter() - began)
"""


def timed_start(home: Path, cache: Path) -> float:
    """Seconds from calling ``start`` to a healthy API, in a fresh process."""
    env = {**os.environ, "EMOTION_CACHE_DIR": str(cache), "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-c", _START, str(home)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def timed_command(data_dir: Path, cache: Path) -> float:
    """Wall seconds of ``emotion pipeline yalefaces --until split`` into ``data_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"EMOTION_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", "flows", "pipeline", str(datasets_dir() / "yalefaces"), "-d", str(data_dir)]
    began = time.perf_counter()
    subprocess.run([*command, "--until", "split", "--face-mode", "whole"], env=env, capture_output=True, check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work, template_cache = Path(tmp), Path(tmp) / "cache"
        times: dict[str, list[float]] = {"no template": [], "from the template": [], "existing database": []}
        for n in range(args.rounds):
            times["no template"].append(timed_start(work / f"bare-{n}", work / f"empty-{n}"))
        timed_start(work / "first", template_cache)  # leaves the template
        for n in range(args.rounds):
            times["from the template"].append(timed_start(work / f"seeded-{n}", template_cache))
            times["existing database"].append(timed_start(work / "first", template_cache))
        result = {name: round(statistics.median(values), 2) for name, values in times.items()}
        base = result["no template"]
        result |= {f"{name} ratio": round(base / value, 2) for name, value in result.items() if name != "no template"}
        if (datasets_dir() / "yalefaces").is_dir():
            result["command, no template"] = round(timed_command(work / "cmd-bare", work / "empty-cmd"), 1)
            result["command, from the template"] = round(timed_command(work / "cmd-seeded", template_cache), 1)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
