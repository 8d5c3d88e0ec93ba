"""Stage 3: deterministic, stratified train/val/test assignment by content id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd

from .manifest import SPLITS

DEFAULT_RATIOS = (0.8, 0.1, 0.1)
DEFAULT_SEED = 1337


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Validate train/val/test ratios: three non-negative numbers summing to 1, train > 0."""
    if len(ratios) != 3:
        raise ValueError(f"split ratios must be three numbers (train, val, test), got {list(ratios)}")
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6 or ratios[0] <= 0:
        raise ValueError(f"split ratios must be >= 0, sum to 1 and give train a share, got {list(ratios)}")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def flag_label_conflicts(df: pd.DataFrame) -> pd.DataFrame:
    """Mark usable rows whose image content also appears under another label as ``label_conflict``."""
    df = df.copy()
    ok = df["status"] == "ok"
    labels_per_id = df[ok].groupby("id")["label"].agg(lambda s: sorted(set(s)))
    conflicted = labels_per_id[labels_per_id.map(len) > 1]
    if conflicted.empty:
        return df
    hit = ok & df["id"].isin(conflicted.index)
    df.loc[hit, "status"] = "label_conflict"
    df.loc[hit, "reason"] = df.loc[hit, "id"].map(
        lambda i: "same image content is labelled " + " and ".join(conflicted[i])
    )
    return df


def _rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def _held_out_sizes(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Validation and test sizes for ``n`` ids, leaving at least one for training."""
    n_val, n_test = round(n * ratios[1]), round(n * ratios[2])
    excess = n_val + n_test - (n - 1)
    if excess > 0:
        cut = min(excess, n_test)
        n_test -= cut
        n_val -= excess - cut
    return max(n_val, 0), max(n_test, 0)


def assign_splits(df: pd.DataFrame, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Assign ``split`` to every usable row, stratified by label, grouped by content id.

    Ids of each label are ordered by a seeded hash and cut by the ratios, so the result depends
    only on the set of (id, label) pairs and the seed, not on file order or names. Rows sharing
    an id share a split; content under two labels is flagged and left out (see
    :func:`flag_label_conflicts`). Unusable rows get no split.
    """
    ratios = check_ratios(ratios)
    df = flag_label_conflicts(df)
    df["split"] = pd.Series(pd.NA, index=df.index, dtype="string")
    ok = df["status"] == "ok"
    assignment: dict[str, str] = {}
    for _label, ids in df[ok].groupby("label")["id"]:
        unique = sorted(set(ids), key=lambda i: _rank(seed, i))
        n = len(unique)
        n_val, n_test = _held_out_sizes(n, ratios)
        n_train = n - n_val - n_test
        for pos, image_id in enumerate(unique):
            assignment[image_id] = SPLITS[0] if pos < n_train else SPLITS[1] if pos < n_train + n_val else SPLITS[2]
    df.loc[ok, "split"] = df.loc[ok, "id"].map(assignment)
    return df
