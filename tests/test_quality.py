"""Sharpness checks that expose a domain shift between training and evaluation faces."""

import cv2
import numpy as np

from emotion_core.quality import LiveSharpness, blur, blur_to_match, median_sharpness, sharpness, sharpness_shift


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


def test_live_sharpness_decides_once_after_warmup_and_can_match():
    rng = np.random.default_rng(2)
    faces = list(np.kron(rng.integers(0, 256, (40, 12, 12)), np.ones((4, 4))).astype(np.uint8))
    target = median_sharpness(blur(np.stack(faces), 2.0))

    watch = LiveSharpness(target, warmup=30)
    assert watch(faces[:29]) is not None and watch.message is None and not watch.decided
    out = watch(faces[29:31])
    assert watch.message.startswith("warning: the live faces are") and "--match-sharpness" in watch.message
    assert all(np.array_equal(a, b) for a, b in zip(out, faces[29:31], strict=True))  # only a warning

    match = LiveSharpness(target, match=True, warmup=30)
    match(faces[:30])
    assert abs(match.sigma - 2.0) <= 0.25 and match.message.startswith("note:")
    later = np.stack(match(faces[30:]))
    assert sharpness_shift(target, median_sharpness(later), "x") is None

    same = LiveSharpness(median_sharpness(np.stack(faces)), match=True, warmup=30)
    same(faces)
    assert same.decided and same.message is None and same.sigma == 0
    unknown = LiveSharpness(None, match=True)
    assert unknown.decided and unknown(faces[:1])[0] is faces[0]
