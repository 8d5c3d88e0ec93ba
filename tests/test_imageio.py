import struct
import zlib

import cv2
import numpy as np
import pytest

from emotion_core import imageio
from emotion_core.imageio import ImageError, atomic_write, decode, header_size
from tests.conftest import jpeg_bytes


def png_bytes(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    ifd = struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_header_size_of_common_formats():
    img = np.zeros((30, 50, 3), np.uint8)
    assert header_size(jpeg_bytes(img)) == (50, 30)
    assert header_size(png_bytes(img)) == (50, 30)
    ok, bmp = cv2.imencode(".bmp", img)
    assert header_size(bmp.tobytes()) == (50, 30)
    assert header_size(b"GIF89a" + struct.pack("<HH", 7, 9) + b"\x00" * 8) == (7, 9)
    assert header_size(b"hello world, not an image") is None


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError) as exc:
        decode(bomb_png(100_000, 100_000))
    assert exc.value.kind == "too_large"


def test_pixel_limit_is_configurable():
    data = jpeg_bytes(np.zeros((100, 100, 3), np.uint8))
    assert decode(data, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageError, match="over the limit"):
        decode(data, max_pixels=9_999)


@pytest.mark.parametrize(
    "data, kind",
    [(b"", "empty"), (b"just some text\n", "not_image"), (b"\xff\xd8\xff\xe0garbage", "corrupt")],
)
def test_bad_bytes_raise_with_kind(data, kind):
    with pytest.raises(ImageError) as exc:
        decode(data)
    assert exc.value.kind == kind


def test_truncated_jpeg_is_corrupt():
    rng = np.random.default_rng(0)
    data = jpeg_bytes(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))
    with pytest.raises(ImageError) as exc:
        decode(data[: len(data) // 2])
    assert exc.value.kind == "corrupt"


def test_exif_orientation_is_applied():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :10] = 255  # bright stripe on the left edge
    rotated = decode(with_exif_orientation(jpeg_bytes(img), 6))
    assert rotated.shape == (80, 40, 3)
    assert rotated[:10].mean() > 200  # orientation 6 turns the left edge into the top edge


def test_gray_stays_gray_in_any_mode_and_color_becomes_bgr():
    gray = np.full((20, 30), 128, np.uint8)
    assert decode(jpeg_bytes(gray), mode="any").ndim == 2
    assert decode(jpeg_bytes(gray), mode="color").shape == (20, 30, 3)
    assert decode(jpeg_bytes(np.zeros((20, 30, 3), np.uint8)), mode="gray").shape == (20, 30)


def test_png_alpha_is_composited_on_white():
    img = np.zeros((10, 10, 4), np.uint8)
    img[..., 2] = 255  # red
    img[:5, :, 3] = 0  # transparent top half
    img[5:, :, 3] = 255
    out = decode(png_bytes(img), mode="color")
    assert out.shape == (10, 10, 3)
    assert (out[0, 0] == 255).all()  # white where transparent
    assert tuple(out[9, 9]) == (0, 0, 255)  # opaque red stays red


def test_16bit_png_becomes_8bit():
    img = np.full((8, 8, 3), 65535, np.uint16)
    out = decode(png_bytes(img), mode="color")
    assert out.dtype == np.uint8 and out.max() == 255


def test_encode_jpeg_quality_bounds():
    with pytest.raises(ValueError):
        imageio.encode_jpeg(np.zeros((4, 4), np.uint8), 0)


def test_atomic_write_creates_folders_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b 한글" / "x.bin"
    atomic_write(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_atomic_write_failure_keeps_old_content(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_remove_stale_temps(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".x.jpg.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "d" / "x.jpg").write_bytes(b"done")
    assert imageio.remove_stale_temps(tmp_path) == 1
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["x.jpg"]
    (tmp_path / ".top.tmp").write_bytes(b"partial")
    (tmp_path / "d" / ".deep.tmp").write_bytes(b"partial")
    assert imageio.remove_stale_temps(tmp_path, recursive=False) == 1
    assert (tmp_path / "d" / ".deep.tmp").exists() and not (tmp_path / ".top.tmp").exists()


def pil_bytes(img, fmt: str, **kwargs) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_cmyk_palette_progressive_and_gray_jpeg():
    from PIL import Image

    red = Image.new("RGB", (40, 30), (255, 0, 0))
    cmyk = decode(pil_bytes(red.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.shape == (30, 40, 3) and cmyk[15, 20, 2] > 200 and cmyk[15, 20, 0] < 60  # still red in BGR
    for fmt in ("GIF", "PNG"):
        palette = decode(pil_bytes(red.convert("P", palette=Image.Palette.ADAPTIVE), fmt))
        assert palette.shape == (30, 40, 3) and tuple(palette[0, 0]) == (0, 0, 255)
    progressive = decode(pil_bytes(red, "JPEG", progressive=True, quality=90))
    assert progressive.shape == (30, 40, 3) and progressive[15, 20, 2] > 200
    gray = decode(pil_bytes(Image.new("L", (40, 30), 77), "JPEG"), mode="any")
    assert gray.shape == (30, 40) and abs(int(gray[5, 5]) - 77) <= 2
