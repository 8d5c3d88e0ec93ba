"""The manifest: one Parquet row per source image (per face with the ``all`` policy).

The schema is enforced on write and on read. Paths are stored relative (``source_path`` to the
input root, ``compressed_path`` and ``face_path`` to the data directory's ``compressed/`` and
``faces/`` folders); a manifest whose paths escape those folders is refused. The label set, the
input layout and the last stage that wrote the manifest travel in the Parquet schema metadata.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .imageio import atomic_write

MANIFEST_NAME = "manifest.parquet"
SCHEMA_VERSION = "1"
SPLITS = ("train", "val", "test")
STAGES = ("compress", "crop", "split")

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # BLAKE2b-128 of the source file's bytes
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("compressed_path", pa.string()),
        pa.field("face_index", pa.int16(), nullable=False),
        pa.field("face_path", pa.string()),
        pa.field("face_x", pa.int32()),
        pa.field("face_y", pa.int32()),
        pa.field("face_w", pa.int32()),
        pa.field("face_h", pa.int32()),
        pa.field("faces_found", pa.int16()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bytes_in", pa.int64()),
        pa.field("bytes_out", pa.int64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("split", pa.string()),
    ]
)
COLUMNS = tuple(SCHEMA.names)


class ManifestError(ValueError):
    """A manifest that is missing, malformed or unsafe to use."""


@dataclass(frozen=True)
class ManifestInfo:
    """The metadata stored with a manifest."""

    labels: tuple[str, ...]
    layout: str
    stage: str
    source_root: str


_NULLABLE_INTS = {pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(), pa.int64(): pd.Int64Dtype()}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow table to pandas with nullable integer columns (no float NaN for missing boxes)."""
    return table.to_pandas(types_mapper=_NULLABLE_INTS.get)


def empty_frame() -> pd.DataFrame:
    """A frame with every manifest column and no rows."""
    return to_frame(SCHEMA.empty_table())


def write_manifest(df: pd.DataFrame, path: str | Path, info: ManifestInfo) -> None:
    """Validate ``df`` against the schema and write it atomically, sorted, with ``info`` as metadata."""
    df = df.sort_values(["source_path", "face_index"], kind="stable").reset_index(drop=True)
    _check_frame(df, info.labels)
    table = pa.Table.from_pandas(df.loc[:, list(COLUMNS)], schema=SCHEMA, preserve_index=False)
    meta = {
        b"emotion.schema_version": SCHEMA_VERSION.encode(),
        b"emotion.labels": json.dumps(list(info.labels), ensure_ascii=False).encode(),
        b"emotion.layout": info.layout.encode(),
        b"emotion.stage": info.stage.encode(),
        b"emotion.source_root": info.source_root.encode(),
    }
    table = table.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(path, buf.getvalue(), durable=True)


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, ManifestInfo]:
    """Read and validate a manifest; raises :class:`ManifestError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}; run the compress/crop/split stages first")
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path} is not a readable Parquet manifest: {exc}") from exc
    missing = [name for name in COLUMNS if name not in schema.names]
    if missing:
        raise ManifestError(f"{path} lacks manifest columns: {', '.join(missing)}")
    meta = schema.metadata or {}
    if b"emotion.labels" not in meta:
        raise ManifestError(f"{path} has no label set in its metadata; it was not written by this pipeline")
    try:
        table = pf.read(columns=list(COLUMNS)).cast(SCHEMA)
        labels = tuple(json.loads(meta[b"emotion.labels"]))
    except (pa.ArrowException, ValueError) as exc:
        raise ManifestError(f"{path} does not match the manifest schema: {exc}") from exc
    info = ManifestInfo(
        labels=labels,
        layout=meta.get(b"emotion.layout", b"folders").decode(),
        stage=meta.get(b"emotion.stage", b"").decode(),
        source_root=meta.get(b"emotion.source_root", b"").decode(),
    )
    df = to_frame(table)
    _check_frame(df, labels)
    return df, info


def _check_frame(df: pd.DataFrame, labels: Sequence[str]) -> None:
    missing = [name for name in COLUMNS if name not in df.columns]
    if missing:
        raise ManifestError(f"manifest lacks columns: {', '.join(missing)}")
    if not labels:
        raise ManifestError("manifest has an empty label set")
    unknown = sorted(set(df["label"].dropna()) - set(labels))
    if unknown:
        raise ManifestError(f"manifest has labels outside its label set {list(labels)}: {unknown}")
    bad_split = sorted(set(df["split"].dropna()) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"manifest has unknown split values: {bad_split}")
    for column in ("source_path", "compressed_path", "face_path"):
        for value in df[column].dropna():
            if not is_safe_relative(value):
                raise ManifestError(f"manifest {column} {value!r} escapes its folder (absolute or '..')")


def is_safe_relative(path: str) -> bool:
    """True for a relative POSIX path that stays inside its base folder."""
    if not path or "\\" in path or "\x00" in path:
        return False
    p = PurePosixPath(path)
    return not p.is_absolute() and ".." not in p.parts and not (len(path) > 1 and path[1] == ":")


def content_hash(df: pd.DataFrame) -> str:
    """A short hash of what training depends on (ids, labels, splits, crops), for cache keys."""
    cols = ["id", "label", "split", "face_path", "status"]
    part = df.loc[:, cols].sort_values(["face_path", "id"], na_position="last").astype("string").fillna("")
    digest = hashlib.sha256()
    for row in part.itertuples(index=False):
        digest.update("\x1f".join(row).encode() + b"\n")
    return digest.hexdigest()[:16]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Counts of usable faces per label (rows) and split (columns), with totals."""
    ok = df[df["status"] == "ok"]
    table = pd.crosstab(ok["label"], ok["split"].fillna("unsplit"), margins=True, margins_name="total")
    order = [c for c in (*SPLITS, "unsplit", "total") if c in table.columns]
    return table.loc[:, order]


def status_counts(df: pd.DataFrame) -> dict[str, int]:
    """Rows per status (``ok`` and each failure kind)."""
    return {str(k): int(v) for k, v in df["status"].value_counts().sort_index().items()}


def from_records(records: Iterable[dict]) -> pd.DataFrame:
    """A manifest frame from row dicts; absent columns are null, types follow the schema."""
    rows = list(records)
    table = pa.Table.from_pylist(
        [{name: row.get(name, 0 if name == "face_index" else None) for name in COLUMNS} for row in rows],
        schema=SCHEMA,
    )
    return to_frame(table)
