"""Stage 1: re-encode photos as low-quality JPEG into a mirrored tree."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from .imageio import DEFAULT_MAX_PIXELS, ImageError, atomic_write, decode, encode_jpeg, header_size, read_bytes

DEFAULT_QUALITY = 40


@dataclass
class CompressResult:
    """Outcome for one source file. ``status`` is ``ok`` or a failure kind, with ``reason``."""

    source_path: str
    compressed_path: str | None
    id: str | None
    status: str
    reason: str | None
    bytes_in: int | None
    bytes_out: int | None
    width: int | None
    height: int | None
    skipped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def content_id(data: bytes) -> str:
    """Content hash that identifies an image across names and folders (BLAKE2b-128, hex)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def compressed_name(rel_path: str) -> str:
    """Output path, relative to ``compressed/``, of a source path: same tree, JPEG extension.

    ``x.jpg`` stays ``x.jpg``; other formats get ``.jpg`` appended (``x.png`` -> ``x.png.jpg``) so two
    sources can never share an output.
    """
    path = PurePosixPath(rel_path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return path.as_posix()
    return f"{path.as_posix()}.jpg"


def compress_file(
    source_root: Path,
    rel_path: str,
    out_root: Path,
    *,
    quality: int = DEFAULT_QUALITY,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CompressResult:
    """Re-encode ``source_root/rel_path`` as JPEG ``quality`` under ``out_root``.

    The source is read once; its content hash is the image id. An output that already exists
    (written atomically by an earlier run) is kept and only measured. Per-file problems are
    returned as a result with a failure status, never raised.
    """
    out_rel = compressed_name(rel_path)
    dst = out_root / out_rel
    try:
        data = read_bytes(source_root / rel_path)
    except ImageError as exc:
        return CompressResult(rel_path, None, None, exc.kind, exc.reason, None, None, None, None)
    image_id = content_id(data)
    done = _existing_output_size(dst)
    if done is not None:
        (width, height), size = done
        return CompressResult(rel_path, out_rel, image_id, "ok", None, len(data), size, width, height, skipped=True)
    try:
        img = decode(data, mode="any", max_pixels=max_pixels)
        encoded = encode_jpeg(img, quality)
        atomic_write(dst, encoded)
    except ImageError as exc:
        return CompressResult(rel_path, None, image_id, exc.kind, exc.reason, len(data), None, None, None)
    except OSError as exc:
        reason = f"cannot write output: {exc.strerror or exc}"
        return CompressResult(rel_path, None, image_id, "write_failed", reason, len(data), None, None, None)
    return CompressResult(rel_path, out_rel, image_id, "ok", None, len(data), len(encoded), img.shape[1], img.shape[0])


def _existing_output_size(dst: Path) -> tuple[tuple[int, int], int] | None:
    """((width, height), bytes) of an output an earlier run finished, read from its header only."""
    try:
        with dst.open("rb") as fh:
            head = fh.read(65536)
            size = fh.seek(0, 2)
    except OSError:
        return None
    dims = header_size(head)
    return (dims, size) if dims and size > 0 else None
