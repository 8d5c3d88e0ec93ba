"""Sweep cost and results.

    python -m bench.sweep [--work bench-out/sweep] [--per-class 120] [--json F]
    python -m bench.sweep --fer-data DIR [--space FILE] [--trials N] [--budget-minutes M] [--workers W]

Default: the wall time of the same 4-trial sweep (the tests' tiny space on 3 x ``--per-class``
FER2013 faces, no pruner so both runs train the same epochs) with 1 worker and with 2 workers
(processes); prints the ratio. Each worker gets the machine's cores divided by the workers as its
TensorFlow and OpenCV threads (``tasks.trial.limit_threads``): 2 threads for 1 worker, 1 each for 2.

``--fer-data``: a real sweep on a data directory that has been through ``emotion pipeline ...
--until split`` (FER2013 train), then every finished trial's saved model scored on FER2013's
public_test with the inference ``emotion evaluate`` uses: the README's sweep table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.data_stages import datasets_dir

BENCH_SPACE = """\
preset: smoke
sampler: {type: random, seed: 7}
pruner: none
params:
  epochs: 3
  model: vgg_lite
  learning_rate: {low: 1.0e-3, high: 3.0e-3, log: true}
  batch_size: {choices: [32, 64]}
"""


def emotion(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"emotion {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def sample(work: Path, per_class: int) -> Path:
    """3 FER2013 classes x ``per_class`` faces through compress, crop and split (once)."""
    split = work / "split"
    if (split / "manifest.parquet").is_file():
        return split
    source = work / "input"
    for label in ("happy", "surprise", "sad"):
        (source / label).mkdir(parents=True, exist_ok=True)
        for path in sorted((datasets_dir() / "fer2013" / "train" / label).glob("*.jpg"))[:per_class]:
            link = source / label / path.name
            if not link.is_symlink():
                link.symlink_to(path)
    emotion("split", str(source), "-d", str(split), "--face-mode", "whole")
    return split


def timed_sweep(split: Path, dest: Path, space: Path, workers: int) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(split, dest, symlinks=True)
    start = time.perf_counter()
    emotion("sweep", "-d", str(dest), "--trials", "4", "--space", str(space), "--workers", str(workers))
    return time.perf_counter() - start


def parallel_speedup(work: Path, per_class: int) -> dict:
    split = sample(work, per_class)
    space = work / "space.yaml"
    space.write_text(BENCH_SPACE)
    one = timed_sweep(split, work / "workers-1", space, 1)
    two = timed_sweep(split, work / "workers-2", space, 2)
    cores = len(os.sched_getaffinity(0))
    return {
        "faces": 3 * per_class,
        "trials": 4,
        "cores": cores,
        "threads_per_trial": {"1 worker": cores, "2 workers": max(1, cores // 2)},
        "wall_s_1_worker": round(one, 1),
        "wall_s_2_workers": round(two, 1),
        "speedup_2_workers": round(one / two, 2),
    }


def fer_sweep(data_dir: Path, space: str | None, trials: int, budget: float | None, workers: int) -> dict:
    """A real sweep on FER2013, then every finished trial's model on public_test."""
    import optuna

    from emotion_core.evaluate import compute_metrics, load_labelled_faces, predict_probs
    from emotion_core.train import FINAL_NAME

    command = ["sweep", "-d", str(data_dir), "--trials", str(trials), "--workers", str(workers)]
    command += ["--space", space] if space else []
    command += ["--budget-minutes", str(budget)] if budget is not None else []
    start = time.perf_counter()
    emotion(*command)
    wall = (time.perf_counter() - start) / 60
    storage = f"sqlite:///{data_dir.resolve() / 'sweeps' / 'optuna.db'}"
    names = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=names[-1], storage=storage)
    import keras

    from emotion_core.manifest import read_manifest

    _, info = read_manifest(data_dir / "manifest.parquet")
    faces = load_labelled_faces(datasets_dir() / "fer2013" / "public_test", info.labels)
    rows = []
    for t in study.trials:
        work = Path(t.user_attrs.get("work_dir", ""))
        if t.state.name not in ("COMPLETE", "PRUNED") or not (work / FINAL_NAME).is_file():
            continue
        model = keras.saving.load_model(work / FINAL_NAME, compile=False, safe_mode=True)
        metrics = compute_metrics(faces.y, predict_probs(model, faces.x).argmax(1), info.labels)
        minutes = (t.datetime_complete - t.datetime_start).total_seconds() / 60
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "params": t.params,
                "epochs": t.last_step,
                "val_accuracy": round(t.value, 4) if t.value is not None else None,
                "public_test_accuracy": round(metrics.accuracy, 4),
                "public_test_macro_f1": round(metrics.macro_f1, 4),
                "minutes": round(minutes, 1),
            }
        )
    best = study.best_trial.number if any(t.state.name == "COMPLETE" for t in study.trials) else None
    return {"command": "emotion " + " ".join(command), "wall_min": round(wall, 1), "best_trial": best, "trials": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="bench-out/sweep")
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--fer-data", type=Path, default=None)
    parser.add_argument("--space", default=None)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--budget-minutes", type=float, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.fer_data:
        result = fer_sweep(args.fer_data, args.space, args.trials, args.budget_minutes, args.workers)
    else:
        work = Path(args.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = parallel_speedup(work, args.per_class)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
