"""Averages of trained networks on FER2013, scored as ``emotion evaluate`` scores (README: "Averaging
networks of different kinds").

    python -m bench.fer_ensemble NAME=MODEL.keras NAME=MODEL.keras ... --data-dir DIR
                                 [--work bench-out/fer-accuracy] [--json F]

Each model's class probabilities (its own inference: a flip-averaged model averages each face with
its mirror image) are averaged over every combination of the models and scored on:

- the test split of ``--data-dir``'s manifest (the models must have been trained on that data dir's
  split, or one made alike: the split stage is deterministic), which picks the combination;
- FER2013's public_test, and public_test without the faces that duplicate train images;
- the Yale photos (``happy``, ``sad``, ``surprised``, ``normal``), cropped by ``emotion crop`` into
  ``WORK/yale`` as ``bench.fer_accuracy`` crops them (reused when there).

The pick per number of models is the combination with the best macro-F1 on the test split, so
public_test stays unseen by the choice. The models' outputs must follow the manifest's label order.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from bench.data_stages import datasets_dir
from bench.fer_accuracy import YALE_LABEL_MAP, emotion
from emotion_core.evaluate import compute_metrics, load_labelled_faces, predict_probs, read_duplicate_list
from emotion_core.labels import parse_label_map


def scoring_sets(data_dir: Path, work: Path) -> tuple[tuple[str, ...], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The labels and the (faces, classes) of the test split, public_test with and without the
    train duplicates, and the Yale crops."""
    from emotion_core.dataset import pack_faces
    from emotion_core.manifest import read_manifest

    frame, info = read_manifest(data_dir / "manifest.parquet")
    packed = pack_faces(frame, info.labels, data_dir)
    fer = datasets_dir() / "fer2013"
    public = load_labelled_faces(fer / "public_test", packed.labels)
    duplicates = read_duplicate_list(fer / "train_duplicates_of_public_test.tsv")
    unique = np.array([path not in duplicates for path in public.paths])
    yale = work / "yale"
    if not (yale / "faces").is_dir():
        emotion("crop", str(datasets_dir() / "yalefaces"), "-d", str(yale))
    yale_faces = load_labelled_faces(yale / "faces", packed.labels, parse_label_map(YALE_LABEL_MAP))
    sets = {
        "test_split": packed.part("test"),
        "public_test": (public.x, public.y),
        "public_test_dedup": (public.x[unique], public.y[unique]),
        "yale_happy_sad_surprised_normal": (yale_faces.x, yale_faces.y),
    }
    return packed.labels, sets


Scores = dict[tuple[str, ...], dict[str, tuple[float, float]]]


def score_combinations(
    probs: dict[str, dict[str, np.ndarray]], truth: dict[str, np.ndarray], labels: tuple[str, ...]
) -> Scores:
    """(accuracy, macro-F1) on every set of the mean of every combination of the models' probabilities."""
    scores = {}
    for size in range(1, len(probs) + 1):
        for combo in itertools.combinations(probs, size):
            row = {}
            for name, y in truth.items():
                mean = np.mean([probs[model][name] for model in combo], axis=0)
                metrics = compute_metrics(y, mean.argmax(1), labels)
                row[name] = (round(metrics.accuracy, 4), round(metrics.macro_f1, 4))
            scores[combo] = row
    return scores


def picks(scores: Scores) -> dict[int, tuple[str, ...]]:
    """For each number of models, the combination with the best test-split macro-F1."""
    best: dict[int, tuple[str, ...]] = {}
    for combo, row in scores.items():
        if len(combo) not in best or row["test_split"][1] > scores[best[len(combo)]]["test_split"][1]:
            best[len(combo)] = combo
    return best


def main() -> None:
    import keras

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=PATH of a trained .keras model")
    parser.add_argument("--data-dir", required=True, type=Path, help="the data dir whose split the models trained on")
    parser.add_argument("--work", default="bench-out/fer-accuracy", type=Path)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    pairs = [spec.split("=", 1) for spec in args.models]
    models = {pair[0]: pair[-1] for pair in pairs}
    bad = [spec for spec, pair in zip(args.models, pairs, strict=True) if len(pair) != 2 or not Path(pair[1]).is_file()]
    if bad or len(models) != len(pairs):
        raise SystemExit(f"each model must be NAME=PATH of a model file, each name once: {bad or args.models}")
    labels, sets = scoring_sets(args.data_dir.resolve(), args.work.resolve())
    probs = {}
    for name, path in models.items():
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
        if model.output_shape[-1] != len(labels):
            raise SystemExit(f"{name} has {model.output_shape[-1]} outputs; the manifest has {len(labels)} labels")
        probs[name] = {set_name: predict_probs(model, x) for set_name, (x, _) in sets.items()}
    scores = score_combinations(probs, {name: y for name, (_, y) in sets.items()}, labels)
    result = {
        "models": models,
        "picks_by_test_split": {n: {"+".join(c): scores[c]} for n, c in picks(scores).items()},
        "all": {"+".join(c): row for c, row in scores.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
