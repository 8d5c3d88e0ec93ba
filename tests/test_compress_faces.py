import hashlib

import cv2
import numpy as np
import pytest

from emotion_core.compress import compress_file, compressed_name, content_id
from emotion_core.faces import DetectorConfig, FaceDetector, choose_faces, crop_file, face_name, get_detector
from emotion_core.imageio import decode
from tests.conftest import jpeg_bytes, photo_with_face, textured_background


def test_compressed_and_face_names_never_collide():
    assert compressed_name("a/x (1).jpg") == "a/x (1).jpg"
    assert compressed_name("a/x.JPEG") == "a/x.JPEG"
    assert compressed_name("a/x.png") == "a/x.png.jpg"
    names = {face_name(compressed_name(p)) for p in ("a/x.jpg", "a/x.png", "a/x.bmp")}
    assert len(names) == 3
    assert face_name("a/x.jpg", 2) == "a/x.face2.png"


def test_compress_file_reencodes_smaller_and_keeps_source(tmp_path):
    src = tmp_path / "in" / "기쁨_TRAIN_1" / "사진 (1).jpg"
    src.parent.mkdir(parents=True)
    photo = textured_background(480, 640, seed=1)
    src.write_bytes(jpeg_bytes(photo, quality=95))
    before = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "out"
    result = compress_file(tmp_path / "in", "기쁨_TRAIN_1/사진 (1).jpg", out, quality=40)
    assert result.status == "ok" and not result.skipped
    assert result.bytes_out < result.bytes_in / 2
    assert (result.width, result.height) == (640, 480)
    assert result.id == content_id(src.read_bytes())
    written = (out / result.compressed_path).read_bytes()
    assert len(written) == result.bytes_out
    assert decode(written).shape == (480, 640, 3)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == before  # the input is never modified
    again = compress_file(tmp_path / "in", "기쁨_TRAIN_1/사진 (1).jpg", out, quality=40)
    assert again.skipped
    assert {**again.to_dict(), "skipped": False} == result.to_dict()  # same row as a fresh run


@pytest.mark.parametrize("data, status", [(b"", "empty"), (b"text\n", "not_image"), (None, "missing")])
def test_compress_file_records_bad_input(tmp_path, data, status):
    if data is not None:
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "x.jpg").write_bytes(data)
    result = compress_file(tmp_path, "c/x.jpg", tmp_path / "out")
    assert result.status == status and result.reason
    assert result.compressed_path is None
    assert not (tmp_path / "out").exists()


def yale_face(yale, name="happy/subject01.png"):
    return cv2.imread(str(yale / name), cv2.IMREAD_GRAYSCALE)


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    return inter / (aw * ah + bw * bh - inter)


def test_detector_maps_boxes_back_to_full_resolution(yale):
    gray = yale_face(yale)
    big = cv2.resize(gray, None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)  # 1280x972
    full = FaceDetector(DetectorConfig(working_size=0)).detect(gray)
    reduced = FaceDetector(DetectorConfig(working_size=640)).detect(big)
    assert full and reduced
    expected = tuple(v * 4 for v in full[0])
    assert iou(reduced[0], expected) > 0.7
    x, y, w, h = reduced[0]
    assert 0 <= x and 0 <= y and x + w <= big.shape[1] and y + h <= big.shape[0]


def test_detector_is_built_once_per_thread():
    assert get_detector() is get_detector()
    with pytest.raises(ValueError, match="cannot load"):
        FaceDetector(DetectorConfig(cascade="no_such_cascade.xml"))


def test_choose_faces_policies():
    boxes = [(0, 0, 50, 50), (60, 0, 20, 20)]
    assert choose_faces(boxes, "largest") == ([(0, 0, 50, 50)], None)
    assert choose_faces(boxes, "all") == (boxes, None)
    assert choose_faces(boxes, "skip")[0] == []
    assert choose_faces(boxes[:1], "skip") == (boxes[:1], None)
    assert choose_faces([], "largest") == ([], "no face detected")
    with pytest.raises(ValueError):
        choose_faces(boxes, "biggest")


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_crop_file_detects_and_writes_gray_crop(tmp_path, yale):
    photo = photo_with_face(yale_face(yale), seed=3, size=(600, 800), scale=2.0)
    write(tmp_path / "c" / "a" / "p.jpg", jpeg_bytes(photo))
    [row] = crop_file(tmp_path / "c", "a/p.jpg", tmp_path / "f", face_mode="detect")
    assert row.status == "ok" and row.faces_found == 1
    # the pasted face occupies the centre 640x486 region; the box lies inside it
    assert 80 <= row.face_x <= 400 and 57 <= row.face_y <= 350
    crop = cv2.imread(str(tmp_path / "f" / row.face_path), cv2.IMREAD_UNCHANGED)
    assert crop.ndim == 2
    assert max(crop.shape) <= 256


def test_crop_file_modes_and_failures(tmp_path):
    small = np.full((48, 48), 100, np.uint8)
    write(tmp_path / "c" / "a" / "small.jpg", jpeg_bytes(small))
    write(tmp_path / "c" / "a" / "wall.jpg", jpeg_bytes(textured_background(300, 400, 1)))
    write(tmp_path / "c" / "a" / "bad.jpg", b"nope")
    [whole] = crop_file(tmp_path / "c", "a/small.jpg", tmp_path / "f", face_mode="auto")
    assert whole.status == "ok" and (whole.face_w, whole.face_h) == (48, 48) and whole.faces_found is None
    [none] = crop_file(tmp_path / "c", "a/wall.jpg", tmp_path / "f", face_mode="auto")
    assert none.status == "no_face" and none.faces_found == 0 and none.face_path is None
    [forced] = crop_file(tmp_path / "c", "a/wall.jpg", tmp_path / "f", face_mode="whole")
    assert forced.status == "ok" and (forced.face_w, forced.face_h) == (400, 300)
    [bad] = crop_file(tmp_path / "c", "a/bad.jpg", tmp_path / "f")
    assert bad.status == "not_image"
    with pytest.raises(ValueError):
        crop_file(tmp_path / "c", "a/small.jpg", tmp_path / "f", face_mode="magic")
