"""Data checks that catch a silent domain shift between the faces a model learns from and the faces it
is judged on (or meets live): sharpness, measured as the variance of the Laplacian of each face.

Why: the FER2013 training split provided here is low-pass filtered (median sharpness ~6, about a
Gaussian blur of sigma 3 px at 48 px) while its public_test split is sharp (~2,000). A model trained
on one and evaluated on the other collapses onto one or two classes in inference mode while its
training accuracy looks normal; nothing else in the pipeline would say why.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Medians further apart than this factor are reported as a shift (blur of sigma 1 px at 48 px
#: already divides the median of sharp faces by ~5).
SHIFT_FACTOR = 4.0


def sharpness(faces: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each uint8 face (N, S, S): high for sharp faces, low for blurred."""
    return np.array([cv2.Laplacian(np.asarray(f, np.uint8), cv2.CV_64F).var() for f in faces], dtype=np.float64)


def median_sharpness(faces: np.ndarray, sample: int = 2000) -> float | None:
    """Median sharpness of up to ``sample`` evenly spaced faces; None for no faces."""
    if len(faces) == 0:
        return None
    step = max(1, len(faces) // sample)
    return float(np.median(sharpness(faces[::step])))


def sharpness_shift(
    reference: float | None, other: float | None, what: str, factor: float = SHIFT_FACTOR
) -> str | None:
    """A one-line warning when two median sharpnesses differ by ``factor`` or more, else None."""
    if reference is None or other is None:
        return None
    low, high = sorted((max(reference, 1e-6), max(other, 1e-6)))
    if high / low < factor:
        return None
    direction = "sharper" if other > reference else "blurrier"
    return (
        f"{what} are {high / low:.0f}x {direction} than the training faces (median Laplacian variance "
        f"{other:.1f} vs {reference:.1f}): a domain shift, so accuracy on them will not reflect the training"
    )
