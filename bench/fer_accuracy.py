"""FER2013 accuracy along the user's path, end to end, as the README reports it.

    python -m bench.fer_accuracy [--preset cpu] [--model M] [--epochs N] [--budget-minutes M]
                                 [--ratios 0.9,0.05,0.05] [--learning-rate R] [--optimizer sgd]
                                 [--work bench-out/fer-accuracy] [--json F]

1. ``emotion pipeline <datasets>/fer2013/train -d WORK/<preset> --face-mode whole --preset P`` in a
   subprocess, wall-timed: compress, crop, split, train, register. The model trains on the split
   stage's train share (80%, or ``--ratios``); the val share is watched per epoch (the presets keep the last epoch)
   and the test share decides the champion; public_test stays unseen. A rerun
   reuses finished work (an interrupted training resumes), so only an uninterrupted first run's wall
   time is the preset's budget.
2. ``emotion evaluate --json`` of the registered champion on public_test (3,589 faces) and on
   public_test without the faces that duplicate train images
   (``fer2013/train_duplicates_of_public_test.tsv``), plain and with ``--flip``.
3. A cross-dataset check: ``emotion crop`` on the Yale photos (the face found by the crop stage's
   detector), then ``emotion evaluate`` on the crops of ``happy``, ``sad``, ``surprised`` (as
   surprise) and ``normal`` (as neutral); the other conditions are skipped as unknown labels.

Inference cost is measured by ``bench.realtime_latency``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.data_stages import datasets_dir
from emotion_core.evaluate import read_duplicate_list

YALE_LABEL_MAP = "surprised=surprise,normal=neutral"


def emotion(*args: str) -> subprocess.CompletedProcess:
    """Run the ``emotion`` CLI of this interpreter's environment; raise with its output on failure."""
    done = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"emotion {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def evaluate(data: Path, data_dir: Path, *extra: str) -> dict:
    """``emotion evaluate --json`` of the data dir's champion on ``data``."""
    out = emotion("evaluate", "--data", str(data), "--data-dir", str(data_dir), "--json", *extra).stdout
    report = json.loads(out.strip().splitlines()[-1])
    report["per_class_recall"] = {k: round(v, 3) for k, v in report["per_class_recall"].items()}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}


def public_test_without_duplicates(fer: Path, dest: Path) -> int:
    """Link public_test into ``dest`` minus the faces that duplicate train images; returns how many were left out."""
    duplicates = read_duplicate_list(fer / "train_duplicates_of_public_test.tsv")
    for face in sorted((fer / "public_test").glob("*/*")):
        rel = f"{face.parent.name}/{face.name}"
        if rel not in duplicates:
            (dest / face.parent.name).mkdir(parents=True, exist_ok=True)
            link = dest / rel
            if not link.is_symlink():
                link.symlink_to(face)
    return len(duplicates)


def training_summary(data_dir: Path) -> dict:
    """The registered training's record (epochs run, best epoch, test-split metrics)."""
    records = sorted(data_dir.glob("training/*/registered.json"), key=lambda p: p.stat().st_mtime)
    if not records:
        return {}
    record = json.loads(records[-1].read_text())
    keep = ("model", "model_uri", "kept_epoch", "epochs_run", "alias", "plan", "members")
    return {**{k: record.get(k) for k in keep}, "test_split": record["metrics"]}


def machine() -> str:
    """The CPU's model name, core count and whether it has bfloat16 instructions (what the
    training's cost depends on most)."""
    from emotion_core.train import auto_precision

    name, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1] for line in lines if line.startswith("flags")).split())
    except (OSError, StopIteration):
        pass
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = "bfloat16 instructions" if auto_precision() == "mixed_bfloat16" else "no bfloat16 instructions"
    return f"{name}, {os.cpu_count()} cores, {vectors}, {bf16}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--model", default=None, help="override the preset's model")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--budget-minutes", default=None, help="override the preset's time budget (0: none)")
    parser.add_argument("--ratios", default=None, help="train,val,test ratios of the split stage (default: its own)")
    parser.add_argument("--learning-rate", default=None, help="override the preset's learning rate")
    parser.add_argument("--optimizer", default=None, help="override the preset's optimizer (adam, sgd)")
    parser.add_argument("--work", default="bench-out/fer-accuracy")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    fer, work = datasets_dir() / "fer2013", Path(args.work).resolve()
    overrides = {"--model": args.model, "--epochs": args.epochs, "--budget-minutes": args.budget_minutes}
    overrides |= {"--ratios": args.ratios, "--learning-rate": args.learning_rate, "--optimizer": args.optimizer}
    data_dir = work / "-".join([args.preset, *(str(v) for v in overrides.values() if v is not None)])
    command = ["pipeline", str(fer / "train"), "-d", str(data_dir), "--face-mode", "whole", "--preset", args.preset]
    for option, value in overrides.items():
        if value is not None:
            command += [option, str(value)]
    start = time.perf_counter()
    emotion(*command)
    result: dict = {
        "command": "emotion " + " ".join(command),
        "pipeline_wall_min_this_process": round((time.perf_counter() - start) / 60, 1),
        "machine": machine(),
        "training": training_summary(data_dir),
    }
    deduplicated = work / "public_test_without_train_duplicates"
    result["public_test_duplicates_left_out"] = public_test_without_duplicates(fer, deduplicated)
    for name, folder in (("public_test", fer / "public_test"), ("public_test_dedup", deduplicated)):
        result[name] = evaluate(folder, data_dir)
        result[f"{name}_flip"] = evaluate(folder, data_dir, "--flip")

    yale = work / "yale"
    emotion("crop", str(datasets_dir() / "yalefaces"), "-d", str(yale))
    result["yale_happy_sad_surprised_normal"] = evaluate(yale / "faces", data_dir, "--label-map", YALE_LABEL_MAP)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
