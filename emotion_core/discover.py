"""Find the labelled images under an input root, in a stable order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .imageio import IMAGE_EXTENSIONS
from .labels import AIHUB_LABELS, aihub_label, folder_label, normalize


class InputError(ValueError):
    """The input root cannot be used at all (missing, empty, no labelled images)."""


@dataclass(frozen=True)
class SourceImage:
    """One input file: its path relative to the input root (POSIX), label and class folder."""

    rel_path: str
    label: str
    folder: str


@dataclass(frozen=True)
class Discovery:
    """What was found under an input root."""

    root: Path
    layout: str  # "aihub" or "folders"
    labels: tuple[str, ...]
    images: tuple[SourceImage, ...]


def discover(root: str | os.PathLike) -> Discovery:
    """List every image file under ``root``'s class folders, sorted, with its label.

    The layout is AIHub when every top-level folder with images parses as ``<emotion>_TRAIN_<trial>``,
    otherwise folder-per-class. Files with an image extension are listed even if they turn out not to
    be images, so later stages record them as failures instead of silently dropping them. Hidden files
    and folders are skipped. Folders that are symbolic links are followed, except a link back to a
    folder it lies in (a loop), which is skipped.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"input root does not exist: {root}")
    if not root.is_dir():
        raise InputError(f"input root is not a folder: {root}")
    by_folder: dict[str, list[str]] = {}
    ancestors = {str(root): (os.path.realpath(root),)}  # real paths from the root down to each folder
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        chain = ancestors.pop(dirpath)
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in chain:
                kept.append(d)
                ancestors[os.path.join(dirpath, d)] = (*chain, real)
        dirnames[:] = kept
        rel_dir = Path(dirpath).relative_to(root)
        if not rel_dir.parts:
            continue  # files directly in the root carry no label
        files = [f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        if files:
            top = rel_dir.parts[0]
            by_folder.setdefault(top, []).extend((rel_dir / f).as_posix() for f in files)
    if not by_folder:
        raise InputError(f"no image files found in class folders under {root}")

    aihub = {folder: aihub_label(folder) for folder in by_folder}
    layout = "aihub" if all(aihub.values()) else "folders"
    images: list[SourceImage] = []
    for folder in sorted(by_folder):
        label = aihub[folder] if layout == "aihub" else folder_label(folder)
        images.extend(SourceImage(rel, label, normalize(folder)) for rel in sorted(by_folder[folder]))
    found = {img.label for img in images}
    if layout == "aihub":
        labels = tuple(lbl for lbl in AIHUB_LABELS if lbl in found)
    else:
        labels = tuple(sorted(found))
    return Discovery(root=root, layout=layout, labels=labels, images=tuple(images))
