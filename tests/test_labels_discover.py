import unicodedata

import pytest

from emotion_core.discover import InputError, discover
from emotion_core.labels import AIHUB_LABELS, aihub_label, folder_label, parse_label_map


@pytest.mark.parametrize(
    "folder, label",
    [
        ("기쁨_TRAIN_1", "pleasure"),
        ("당황_TRAIN_12", "upset"),
        ("분노_TRAIN_3", "anger"),
        ("불안_TRAIN_1", "unrest"),
        ("상처_TRAIN_1", "wound"),
        ("슬픔_TRAIN_2", "sadness"),
        ("중립_TRAIN_1", "neutrality"),
        ("anger_TRAIN_1", "anger"),
        ("Sadness_TRAIN_x", "sadness"),
        (unicodedata.normalize("NFD", "슬픔_TRAIN_1"), "sadness"),  # macOS-style decomposed Hangul
        ("angry", None),
        ("행복_TRAIN_1", None),
    ],
)
def test_aihub_label(folder, label):
    assert aihub_label(folder) == label


def test_folder_label_and_label_map():
    assert folder_label(" Happy ") == "happy"
    assert parse_label_map("anger=angry, sadness=sad") == {"anger": "angry", "sadness": "sad"}
    with pytest.raises(ValueError):
        parse_label_map("anger")


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_discover_aihub_layout(tmp_path):
    touch(tmp_path / "슬픔_TRAIN_1" / "b (2).jpg")
    touch(tmp_path / "슬픔_TRAIN_1" / "a (1).jpg")
    touch(tmp_path / "기쁨_TRAIN_1" / "sub" / "c (1).JPG")
    touch(tmp_path / "기쁨_TRAIN_1" / "notes.txt")
    touch(tmp_path / "기쁨_TRAIN_1" / ".hidden.jpg")
    touch(tmp_path / "loose.jpg")
    found = discover(tmp_path)
    assert found.layout == "aihub"
    assert found.labels == ("pleasure", "sadness")  # canonical order, only classes present
    assert [(i.rel_path, i.label) for i in found.images] == [
        ("기쁨_TRAIN_1/sub/c (1).JPG", "pleasure"),
        ("슬픔_TRAIN_1/a (1).jpg", "sadness"),
        ("슬픔_TRAIN_1/b (2).jpg", "sadness"),
    ]


def test_discover_folder_per_class(tmp_path):
    touch(tmp_path / "happy" / "1.png")
    touch(tmp_path / "sad" / "2.jpg")
    touch(tmp_path / "기쁨_TRAIN_1" / "3.jpg")  # one AIHub folder among plain ones: plain layout
    found = discover(tmp_path)
    assert found.layout == "folders"
    assert found.labels == ("happy", "sad", "기쁨_train_1")
    assert set(AIHUB_LABELS).isdisjoint(found.labels)


def test_discover_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover(tmp_path / "missing")
    with pytest.raises(InputError, match="no image files"):
        discover(tmp_path)
    touch(tmp_path / "file.jpg")
    with pytest.raises(InputError, match="not a folder"):
        discover(tmp_path / "file.jpg")


def test_discover_follows_symlinked_class_folders_but_not_loops(tmp_path):
    data, root = tmp_path / "data", tmp_path / "root"
    touch(data / "happy" / "1.jpg")
    touch(data / "sad" / "deep" / "2.jpg")
    root.mkdir()
    (root / "happy").symlink_to(data / "happy", target_is_directory=True)
    (root / "sad").symlink_to(data / "sad", target_is_directory=True)
    (data / "sad" / "deep" / "again").symlink_to(data / "sad", target_is_directory=True)  # a loop
    (root / "loop").symlink_to(root, target_is_directory=True)  # a loop at the top
    found = discover(root)
    assert found.labels == ("happy", "sad")
    assert [i.rel_path for i in found.images] == ["happy/1.jpg", "sad/deep/2.jpg"]
