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


#: Gaussian sigmas (px at the model's input size) tried by :func:`blur_to_match`.
MATCH_SIGMAS = tuple(np.round(np.arange(0.25, 6.01, 0.25), 2))


def blur(faces: np.ndarray, sigma: float) -> np.ndarray:
    """Each uint8 face (N, S, S) blurred with a Gaussian of ``sigma`` px (a copy; 0 returns the faces)."""
    if sigma <= 0:
        return faces
    return np.stack([cv2.GaussianBlur(np.asarray(f, np.uint8), (0, 0), sigma) for f in faces]) if len(faces) else faces


def blur_to_match(faces: np.ndarray, target: float, sample: int = 300) -> tuple[np.ndarray, float]:
    """Faces blurred so that their median sharpness comes closest (in log scale) to ``target``, the
    training faces' median; returns ``(faces, sigma)``. Faces not sharper than the target by
    :data:`SHIFT_FACTOR` are returned unchanged with sigma 0.

    A stop-gap for a model trained on blurred faces (as FER2013's train split here): it lets the model
    see the domain it learned instead of collapsing onto one class. It cannot add what the training
    faces lacked; training on faces like the ones it will meet is the fix.
    """
    current = median_sharpness(faces, sample)
    if current is None or target <= 0 or current < target * SHIFT_FACTOR:
        return faces, 0.0
    probe = faces[:: max(1, len(faces) // sample)]
    errors = [abs(np.log(max(float(np.median(sharpness(blur(probe, s)))), 1e-6) / target)) for s in MATCH_SIGMAS]
    sigma = float(MATCH_SIGMAS[int(np.argmin(errors))])
    return blur(faces, sigma), sigma


class LiveSharpness:
    """Compares the sharpness of live faces with the model's training faces, once enough are seen.

    After ``warmup`` faces it decides once: if their median differs from ``target`` by
    :data:`SHIFT_FACTOR`, :attr:`message` says so (one line, for the caller to show); with ``match``
    and faces sharper than the training ones, every later face is blurred to their sharpness (the
    sigma searched as in :func:`blur_to_match`). Called on each frame's preprocessed faces.
    """

    def __init__(self, target: float | None, match: bool = False, warmup: int = 30):
        self.target, self.match, self.warmup = target, match, warmup
        self.sigma = 0.0
        self.message: str | None = None
        self.decided = not target
        self._seen: list[np.ndarray] = []

    def __call__(self, faces: list[np.ndarray]) -> list[np.ndarray]:
        if not self.decided:
            self._seen.extend(faces[: self.warmup - len(self._seen)])
            if len(self._seen) >= self.warmup:
                self._decide(np.stack(self._seen))
        if not self.sigma or not faces:
            return faces
        return list(blur(np.stack(faces), self.sigma))

    def _decide(self, seen: np.ndarray) -> None:
        self.decided, self._seen = True, []
        shift = sharpness_shift(self.target, median_sharpness(seen), "the live faces")
        if shift is None:
            return
        if self.match:
            _, self.sigma = blur_to_match(seen, self.target)
        if self.sigma:
            self.message = f"note: {shift}; blurring each face with sigma {self.sigma:g} px to match them"
        else:
            hint = "; --match-sharpness blurs them to match" if "sharper" in shift else ""
            self.message = f"warning: {shift}{hint}"
