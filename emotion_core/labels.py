"""Label sets and the mapping from dataset folder names to canonical labels.

Two layouts are understood:

* the AIHub "composite video for Korean emotion recognition" layout, ``<emotion>_TRAIN_<trial>/``
  (``<emotion>`` in English or Korean, e.g. ``기쁨_TRAIN_1``), mapped onto seven canonical labels;
* any folder-per-class dataset (``<root>/<label>/``), whose folder names are the labels.
"""

from __future__ import annotations

import re
import unicodedata

#: The seven classes of the reference dataset, in their canonical order.
AIHUB_LABELS: tuple[str, ...] = ("pleasure", "upset", "anger", "unrest", "wound", "sadness", "neutrality")

#: Korean folder names of the reference dataset and their canonical English labels.
KOREAN_TO_LABEL: dict[str, str] = {
    "기쁨": "pleasure",
    "당황": "upset",
    "분노": "anger",
    "불안": "unrest",
    "상처": "wound",
    "슬픔": "sadness",
    "중립": "neutrality",
}

_AIHUB_FOLDER = re.compile(r"^(?P<emotion>[^_]+)_(?:TRAIN|TEST|VAL|VALID|VALIDATION)(?:_(?P<trial>[^/]*))?$", re.I)


def normalize(name: str) -> str:
    """NFC-normalise a folder name (macOS writes Hangul decomposed, NFD) and strip it."""
    return unicodedata.normalize("NFC", name).strip()


def aihub_label(folder: str) -> str | None:
    """Canonical label of an AIHub folder name such as ``기쁨_TRAIN_3`` or ``anger_TRAIN_1``, else None."""
    match = _AIHUB_FOLDER.match(normalize(folder))
    if not match:
        return None
    emotion = match.group("emotion")
    if emotion in KOREAN_TO_LABEL:
        return KOREAN_TO_LABEL[emotion]
    lowered = emotion.lower()
    return lowered if lowered in AIHUB_LABELS else None


def folder_label(folder: str) -> str:
    """Label of a folder-per-class dataset folder: its NFC-normalised name, lower-cased."""
    return normalize(folder).lower()


def parse_label_map(text: str) -> dict[str, str]:
    """Parse ``anger=angry,sadness=sad`` into a dict; raises ValueError with a readable message."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"label map entry {part!r} is not of the form source=target")
        src, dst = (s.strip() for s in part.split("=", 1))
        if not src or not dst:
            raise ValueError(f"label map entry {part!r} has an empty side")
        mapping[src] = dst
    return mapping
