"""Regenerate the README's screenshots of the Prefect and MLflow UIs from a real run.

    emotion server start -d demo-data      # the UIs, localhost only
    emotion demo -d demo-data              # a real pipeline run, logged to both servers
    python -m scripts.screenshots -d demo-data

Takes, with headless Chromium (Debian's ``chromium`` package), the latest ``emotion-pipeline``
flow run's graph in the Prefect UI, its MLflow run with metrics, and the registered model, into
``docs/img/``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from emotion_core.servers import running_url

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"


def _post(url: str, body: dict) -> list[dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def latest_pipeline_run(prefect: str) -> str:
    """Id of the newest completed ``emotion-pipeline`` flow run on the Prefect server."""
    flows = _post(f"{prefect}/api/flows/filter", {"flows": {"name": {"any_": ["emotion-pipeline"]}}})
    if not flows:
        raise SystemExit("error: no emotion-pipeline run on this Prefect server; run `emotion demo -d DIR` first")
    runs = _post(
        f"{prefect}/api/flow_runs/filter",
        {
            "flows": {"id": {"any_": [flows[0]["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
            "sort": "START_TIME_DESC",
            "limit": 1,
        },
    )
    if not runs:
        raise SystemExit("error: no completed emotion-pipeline run on this Prefect server")
    return runs[0]["id"]


def champion_pages(mlflow_url: str, name: str) -> tuple[str, str]:
    """The MLflow UI pages of the champion's run and of the registered model."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    version = client.get_model_version_by_alias(name, "champion")
    run = client.get_run(version.run_id)
    return (
        f"{mlflow_url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}/model-metrics",
        f"{mlflow_url}/#/models/{name}/versions/{version.version}",
    )


def screenshot(url: str, out: Path, size: tuple[int, int] = (1440, 900), wait_ms: int = 40000) -> None:
    """One PNG of ``url`` after the page's scripts had ``wait_ms`` of virtual time."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("error: headless Chromium not found; install Debian's package: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}",
            url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    print(f"{out}  <- {url}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--data-dir", type=Path, default=Path("emotion-data"))
    parser.add_argument("--out", type=Path, default=DOCS_IMG)
    parser.add_argument("--model-name", default="emotion-classifier")
    args = parser.parse_args(argv)
    prefect, mlflow_url = running_url(args.data_dir, "prefect"), running_url(args.data_dir, "mlflow")
    if not prefect or not mlflow_url:
        sys.exit(f"error: no servers run for {args.data_dir}; start them: emotion server start -d {args.data_dir}")
    args.out.mkdir(parents=True, exist_ok=True)
    flow_run = latest_pipeline_run(prefect)
    run_page, model_page = champion_pages(mlflow_url, args.model_name)
    screenshot(f"{prefect}/runs/flow-run/{flow_run}", args.out / "prefect-flow-run.png")
    screenshot(run_page, args.out / "mlflow-run.png")
    screenshot(model_page, args.out / "mlflow-model.png")


if __name__ == "__main__":
    main()
