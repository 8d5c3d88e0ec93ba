import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emotion_core.manifest import (
    ManifestError,
    ManifestInfo,
    content_hash,
    from_records,
    read_manifest,
    summary,
    write_manifest,
)
from emotion_core.split import assign_splits, check_ratios, flag_label_conflicts

INFO = ManifestInfo(("happy", "sad"), "folders", "crop", "/data/in")


def rows(n_per_label=50, labels=("happy", "sad")):
    out = []
    for label in labels:
        for i in range(n_per_label):
            out.append(
                {
                    "id": f"{label}{i:04d}",
                    "source_path": f"{label}/{i}.jpg",
                    "label": label,
                    "compressed_path": f"{label}/{i}.jpg",
                    "face_path": f"{label}/{i}.png",
                    "face_x": 1,
                    "face_y": 2,
                    "face_w": 30,
                    "face_h": 30,
                    "faces_found": 1,
                    "status": "ok",
                }
            )
    return from_records(out)


def test_roundtrip_keeps_schema_metadata_and_nullable_ints(tmp_path):
    df = rows(3)
    df.loc[0, ["face_x", "status", "reason"]] = [pd.NA, "no_face", "no face detected"]
    write_manifest(df, tmp_path / "m.parquet", INFO)
    back, info = read_manifest(tmp_path / "m.parquet")
    assert info == INFO
    assert str(back["face_x"].dtype) == "Int32"
    assert back["face_x"].isna().sum() == 1
    assert len(back) == 6 and list(back["source_path"]) == sorted(back["source_path"])


@pytest.mark.parametrize(
    "column, value",
    [("face_path", "../../etc/passwd"), ("compressed_path", "/abs/x.jpg"), ("source_path", "a/../../x.jpg")],
)
def test_paths_escaping_the_data_dir_are_refused(tmp_path, column, value):
    df = rows(2)
    df.loc[1, column] = value
    path = tmp_path / "m.parquet"
    table = pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
        {b"emotion.labels": b'["happy", "sad"]'}
    )
    pq.write_table(table, path)
    with pytest.raises(ManifestError, match="escapes"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="escapes"):
        write_manifest(df, tmp_path / "w.parquet", INFO)


def test_wrong_schema_missing_columns_and_unknown_labels_are_refused(tmp_path):
    path = tmp_path / "m.parquet"
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(path)
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ManifestError, match="lacks manifest columns"):
        read_manifest(path)
    df = rows(2)
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table, path)
    with pytest.raises(ManifestError, match="no label set"):
        read_manifest(path)
    pq.write_table(table.replace_schema_metadata({b"emotion.labels": b'["happy"]'}), path)
    with pytest.raises(ManifestError, match="outside its label set"):
        read_manifest(path)
    bad = table.set_column(table.schema.get_field_index("face_x"), "face_x", pa.array(["x"] * len(df)))
    pq.write_table(bad.replace_schema_metadata({b"emotion.labels": b'["happy", "sad"]'}), path)
    with pytest.raises(ManifestError, match="schema"):
        read_manifest(path)
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="not a readable"):
        read_manifest(path)


def test_split_is_stratified_deterministic_and_order_free():
    df = rows(100)
    a = assign_splits(df, (0.8, 0.1, 0.1), seed=7)
    counts = a.groupby(["label", "split"]).size()
    for label in ("happy", "sad"):
        assert (counts[label, "train"], counts[label, "val"], counts[label, "test"]) == (80, 10, 10)
    shuffled = assign_splits(df.sample(frac=1, random_state=3), (0.8, 0.1, 0.1), seed=7)
    assert a.set_index("id")["split"].equals(shuffled.set_index("id")["split"].loc[a["id"]])
    other_seed = assign_splits(df, (0.8, 0.1, 0.1), seed=8)
    assert not a["split"].equals(other_seed["split"])


def test_split_keeps_duplicates_together_and_skips_failures():
    df = rows(30)
    dup = df.iloc[[0]].copy()
    dup["source_path"] = "happy/copy.jpg"
    df = pd.concat([df, dup], ignore_index=True)
    df.loc[5, "status"] = "no_face"
    out = assign_splits(df)
    assert out.loc[out["id"] == "happy0000", "split"].nunique() == 1
    assert pd.isna(out.loc[5, "split"])


def test_same_content_under_two_labels_is_flagged():
    df = rows(5)
    df.loc[df["source_path"] == "sad/0.jpg", "id"] = "happy0000"
    out = flag_label_conflicts(df)
    flagged = out[out["status"] == "label_conflict"]
    assert sorted(flagged["source_path"]) == ["happy/0.jpg", "sad/0.jpg"]
    assert "happy and sad" in flagged["reason"].iloc[0]
    split = assign_splits(df)
    assert split.loc[split["status"] == "label_conflict", "split"].isna().all()


def test_tiny_classes_keep_a_training_example():
    out = assign_splits(rows(2), (0.5, 0.25, 0.25))
    assert (out.groupby("label")["split"].apply(lambda s: (s == "train").sum()) >= 1).all()


def test_check_ratios():
    assert check_ratios([0.7, 0.2, 0.1]) == (0.7, 0.2, 0.1)
    for bad in ([0.5, 0.5], [0.9, 0.2, 0.1], [0, 0.5, 0.5], [1.2, -0.1, -0.1]):
        with pytest.raises(ValueError):
            check_ratios(bad)


def test_summary_and_content_hash():
    df = assign_splits(rows(10))
    table = summary(df)
    assert table.loc["total", "total"] == 20
    assert list(table.columns) == ["train", "val", "test", "total"]
    h = content_hash(df)
    assert h == content_hash(df.sample(frac=1, random_state=1))
    changed = df.copy()
    changed.loc[0, "label"] = "sad"
    assert content_hash(changed) != h
