"""Sharpness checks that expose a domain shift between training and evaluation faces."""

import cv2
import numpy as np

from emotion_core.quality import blur, blur_to_match, median_sharpness, sharpness, sharpness_shift


def test_blur_lowers_sharpness_and_is_reported_as_a_shift():
    rng = np.random.default_rng(0)  # blocky faces: sharp edges
    faces = np.stack(
        [
            cv2.resize(rng.integers(0, 256, (12, 12), dtype=np.uint8), (48, 48), interpolation=cv2.INTER_NEAREST)
            for _ in range(20)
        ]
    )
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 3) for f in faces])
    assert (sharpness(blurred) < sharpness(faces) / 10).all()
    sharp, soft = median_sharpness(faces), median_sharpness(blurred)
    assert sharpness_shift(sharp, sharp * 1.5, "the test faces") is None
    warning = sharpness_shift(soft, sharp, "the test faces")
    assert warning.startswith("the test faces are") and "sharper than the training faces" in warning
    assert "blurrier" in sharpness_shift(sharp, soft, "the live faces")
    assert median_sharpness(np.zeros((0, 48, 48), np.uint8)) is None
    assert sharpness_shift(None, sharp, "x") is None


def test_blur_to_match_finds_the_blur_of_the_training_faces():
    rng = np.random.default_rng(1)
    faces = np.kron(rng.integers(0, 256, (60, 12, 12)), np.ones((4, 4))).astype(np.uint8)
    for sigma in (1.5, 3.0):
        target = median_sharpness(blur(faces, sigma))
        matched, found = blur_to_match(faces, target)
        assert abs(found - sigma) <= 0.25, (sigma, found)
        assert sharpness_shift(target, median_sharpness(matched), "x") is None
    same, none = blur_to_match(faces, median_sharpness(faces) / 2)  # not sharper by the shift factor
    assert none == 0.0 and same is faces
    assert blur_to_match(faces[:0], 10.0)[1] == 0.0
