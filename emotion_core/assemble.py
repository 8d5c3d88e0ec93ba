"""Build manifest rows from each stage's per-file results."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from .discover import SourceImage
from .manifest import COLUMNS, from_records

_COMPRESS_FIELDS = ("id", "compressed_path", "bytes_in", "bytes_out", "width", "height", "status", "reason")
_CROP_FIELDS = ("face_index", "face_path", "face_x", "face_y", "face_w", "face_h", "faces_found", "status", "reason")


def after_compress(images: Iterable[SourceImage], results: Iterable[dict]) -> pd.DataFrame:
    """One manifest row per source image, from the compress results (matched by source path)."""
    by_path = {r["source_path"]: r for r in results}
    rows = []
    for img in images:
        result = by_path.get(img.rel_path)
        row = {"source_path": img.rel_path, "label": img.label, "face_index": 0}
        if result is None:
            row.update(status="missing_result", reason="the compress stage returned nothing for this file")
        else:
            row.update({k: result[k] for k in _COMPRESS_FIELDS})
        rows.append(row)
    return from_records(rows)


def after_crop(df: pd.DataFrame, results: Iterable[dict]) -> pd.DataFrame:
    """Join crop results onto compressed rows; an image with several kept faces becomes several rows."""
    by_path: dict[str, list[dict]] = {}
    for r in results:
        by_path.setdefault(r["compressed_path"], []).append(r)
    rows = []
    for row in df.to_dict("records"):
        base = {k: (None if pd.isna(v) else v) for k, v in row.items() if k in COLUMNS}
        base.update(
            face_index=0,
            face_path=None,
            face_x=None,
            face_y=None,
            face_w=None,
            face_h=None,
            faces_found=None,
            split=None,
        )
        crops = by_path.get(base["compressed_path"]) if base["status"] == "ok" else None
        if not crops:
            rows.append(base)
            continue
        for crop in sorted(crops, key=lambda c: c["face_index"]):
            rows.append({**base, **{k: crop[k] for k in _CROP_FIELDS}})
    return from_records(rows)
