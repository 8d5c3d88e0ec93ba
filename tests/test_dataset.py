"""The training input pipeline: augmentation geometry, batch order, resumability."""

from __future__ import annotations

import numpy as np
import pytest

from emotion_core.dataset import (
    augment_faces,
    epoch_order,
    erase_rectangles,
    make_tf_dataset,
    make_train_dataset,
    mix_batch,
)


def dot_faces(n: int, x: int, y: int) -> np.ndarray:
    faces = np.zeros((n, 48, 48), np.uint8)
    faces[:, y - 1 : y + 2, x - 1 : x + 2] = 255
    return faces


def centroids(faces: np.ndarray) -> np.ndarray:
    """(n, 2) intensity-weighted (x, y) centre of each face."""
    grid_y, grid_x = np.mgrid[0:48, 0:48]
    w = faces.astype(np.float64)
    total = w.sum(axis=(1, 2))
    return np.stack([(w * grid_x).sum(axis=(1, 2)) / total, (w * grid_y).sum(axis=(1, 2)) / total], axis=1)


def test_no_augmentation_ranges_leave_faces_unchanged():
    faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    out = augment_faces(faces, np.random.default_rng(1), flip=False, shift=0, rotate=0, zoom=0)
    assert np.array_equal(out, faces)


def test_crop_without_other_augmentation_is_the_central_window():
    faces = np.random.default_rng(0).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    out = augment_faces(faces, np.random.default_rng(1), flip=False, shift=0, rotate=0, zoom=0, crop=40)
    assert out.shape == (16, 40, 40) and out.dtype == np.uint8
    assert np.array_equal(out, faces[:, 4:44, 4:44])


def test_cropped_faces_keep_their_scale_and_shift_range():
    faces = dot_faces(300, 24, 24)
    out = augment_faces(faces, np.random.default_rng(3), flip=False, rotate=0, zoom=0, crop=40)
    grid_y, grid_x = np.mgrid[0:40, 0:40]
    w = out.astype(np.float64)
    centre = np.stack([(w * grid_x).sum((1, 2)), (w * grid_y).sum((1, 2))], 1) / w.sum((1, 2))[:, None]
    moved = centre - 19.5 - 0.5  # the dot sits half a pixel right of and below the 48 px centre
    assert np.abs(moved).max() <= 0.1 * 48 + 0.5 and np.abs(moved).max() > 0.07 * 48
    assert np.allclose(w.sum((1, 2)), faces.astype(np.float64).sum((1, 2)), rtol=0.02)  # same scale


def test_cropped_training_batches_have_the_crop_size():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 48, 48), dtype=np.uint8), rng.integers(0, 3, 64).astype(np.int32)
    dataset, steps = make_train_dataset(x, y, 16, seed=1, first_epoch=0, epochs=1, crop=40)
    shapes = {tuple(faces.shape) for faces, _ in dataset.as_numpy_iterator()}
    assert steps == 4 and shapes == {(16, 40, 40, 1)}


def test_random_erasing_replaces_one_rectangle_in_about_its_share_of_faces():
    faces = np.full((400, 40, 40), 128, np.uint8)
    out = faces.copy()
    erase_rectangles(out, np.random.default_rng(5), 0.5)
    changed = out != 128
    erased = changed.any(axis=(1, 2))
    assert 160 <= erased.sum() <= 240
    areas = []
    for mask in changed[erased]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        assert box <= 0.25 * 1600 * 1.15  # one rectangle of at most a quarter of the face (rounding aside)
        assert mask.sum() >= 0.9 * box  # filled with noise: few pixels keep the old value by chance
        areas.append(box)
    assert min(areas) < 0.06 * 1600 and max(areas) > 0.18 * 1600  # the area range is used
    assert np.std(out[changed].astype(float)) > 60  # uniform noise, not a constant


def test_erasing_off_keeps_the_batches_it_gave_before_and_on_changes_only_pixels():
    faces = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    plain = augment_faces(faces, np.random.default_rng(7), crop=40)
    assert np.array_equal(augment_faces(faces, np.random.default_rng(7), crop=40, erase=0.0), plain)
    erased = augment_faces(faces, np.random.default_rng(7), crop=40, erase=1.0)
    differs = (erased != plain).any(axis=(1, 2))
    assert differs.all()  # every face got a rectangle, on the same warp
    assert (erased == plain).mean() > 0.75


def test_mixup_blends_each_face_and_its_label_with_another_of_the_batch_by_one_weight():
    faces = np.random.default_rng(0).integers(0, 256, (64, 40, 40), dtype=np.uint8)
    labels = np.arange(64, dtype=np.int32) % 3
    mixed, targets = mix_batch(faces, labels, 3, 0.4, np.random.default_rng(9))
    assert mixed.dtype == np.uint8 and mixed.shape == faces.shape
    assert targets.dtype == np.float32 and targets.shape == (64, 3)
    assert np.allclose(targets.sum(1), 1.0)
    # recover the weight and the partner of each face: the blend of the pixels and of the labels agree
    rng = np.random.default_rng(9)
    lam, other = rng.beta(0.4, 0.4), rng.permutation(64)
    assert 0.0 < lam < 1.0
    expected = lam * faces.astype(float) + (1 - lam) * faces[other].astype(float)
    assert np.abs(mixed - expected).max() <= 0.5 + 1e-9  # rounded to uint8, nothing else
    one_hot = np.eye(3)
    assert np.allclose(targets, lam * one_hot[labels] + (1 - lam) * one_hot[labels[other]], atol=1e-6)


def test_mixup_batches_are_repeatable_and_off_leaves_them_as_before():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (64, 48, 48), dtype=np.uint8), rng.integers(0, 3, 64).astype(np.int32)

    def batches(**mix):
        dataset, _ = make_train_dataset(x, y, 16, seed=1, first_epoch=0, epochs=2, crop=40, **mix)
        return list(dataset.as_numpy_iterator())

    plain, mixed = batches(), batches(mixup=0.2, n_classes=3)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(plain, batches(mixup=0.0, n_classes=3), strict=True))
    again = batches(mixup=0.2, n_classes=3)
    for (faces, targets), (faces2, targets2), (plain_faces, plain_labels) in zip(mixed, again, plain, strict=True):
        assert targets.shape == (16, 3) and targets.dtype == np.float32 and np.allclose(targets.sum(1), 1)
        assert np.array_equal(faces, faces2) and np.array_equal(targets, targets2)
        assert not np.array_equal(faces, plain_faces)  # blended from the same augmented batch
        assert np.all(targets[np.arange(16), plain_labels] > 0)  # each face keeps a share of its own label
    with pytest.raises(ValueError, match="n_classes"):
        make_train_dataset(x, y, 16, seed=1, first_epoch=0, epochs=1, mixup=0.2)


def test_augmentation_strength_scales_how_far_faces_move_and_zero_leaves_flips_only():
    faces = dot_faces(200, 24, 24)
    y = np.zeros(200, np.int32)

    def augmented(**strength):
        dataset, _ = make_train_dataset(faces, y, 50, seed=3, first_epoch=0, epochs=1, **strength)
        return np.concatenate([batch for batch, _ in dataset.as_numpy_iterator()])[..., 0].astype(np.uint8)

    none = augmented(augment=0.0)
    assert all(np.array_equal(o, faces[0]) or np.array_equal(o, faces[0][:, ::-1]) for o in none)  # flips only
    full, half = augmented(augment=1.0), augmented(augment=0.5)
    full_moves, half_moves = (np.abs(centroids(f) - centroids(faces[:1])).max(axis=1) for f in (full, half))
    assert full_moves.max() > 0.07 * 48 and half_moves.max() <= 0.5 * 0.1 * 48 + 1.5
    assert 0.4 < np.median(half_moves) / np.median(full_moves) < 0.65  # the same draws, half as far
    assert np.array_equal(augmented(), full)  # strength 1 is the default


def test_flip_mirrors_about_half_the_faces():
    faces = np.random.default_rng(0).integers(0, 256, (400, 48, 48), dtype=np.uint8)
    out = augment_faces(faces, np.random.default_rng(2), shift=0, rotate=0, zoom=0)
    same = np.array([np.array_equal(o, f) for o, f in zip(out, faces, strict=True)])
    mirrored = np.array([np.array_equal(o, f[:, ::-1]) for o, f in zip(out, faces, strict=True)])
    assert np.all(same ^ mirrored)  # every face is exactly itself or its mirror image
    assert 150 <= mirrored.sum() <= 250


def test_shift_stays_within_ten_percent_of_the_size():
    faces = dot_faces(300, 24, 24)
    moved = centroids(augment_faces(faces, np.random.default_rng(3), flip=False, rotate=0, zoom=0)) - centroids(faces)
    assert np.abs(moved).max() <= 0.1 * 48 + 0.5
    assert np.abs(moved).max() > 0.07 * 48  # the range is used, not just its middle
    assert abs(moved[:, 0].mean()) < 0.6 and abs(moved[:, 1].mean()) < 0.6  # centred


def test_rotation_and_zoom_keep_their_ranges():
    centre = 23.5
    faces = dot_faces(300, 39, 24)  # 15.5 px right of the centre
    after = centroids(augment_faces(faces, np.random.default_rng(4), flip=False, shift=0)) - centre
    before = centroids(faces) - centre
    angle = np.degrees(np.arctan2(after[:, 1], after[:, 0]) - np.arctan2(before[:, 1], before[:, 0]))
    radius = np.hypot(*after.T) / np.hypot(*before.T)
    assert np.abs(angle).max() <= 18 + 1.5 and np.abs(angle).max() > 12
    assert radius.min() >= 1 / 1.1 - 0.03 and radius.max() <= 1 / 0.9 + 0.03


def test_resumed_epochs_see_the_same_batches_as_an_uninterrupted_run():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 48, 48), dtype=np.uint8)
    y = rng.integers(0, 7, 200).astype(np.int32)
    full, steps = make_train_dataset(x, y, 32, seed=5, first_epoch=0, epochs=3)
    resumed, resumed_steps = make_train_dataset(x, y, 32, seed=5, first_epoch=2, epochs=3)
    assert steps == resumed_steps == 6
    full_batches = [(a.numpy(), b.numpy()) for a, b in full]
    resumed_batches = [(a.numpy(), b.numpy()) for a, b in resumed]
    assert len(full_batches) == 18 and len(resumed_batches) == 6
    for (fa, fb), (ra, rb) in zip(full_batches[12:], resumed_batches, strict=True):
        assert np.array_equal(fa, ra) and np.array_equal(fb, rb)
    assert full_batches[0][0].shape == (32, 48, 48, 1) and full_batches[0][0].dtype == np.float32
    # Epochs differ from each other, and labels follow their faces.
    assert not np.array_equal(full_batches[0][1], full_batches[6][1])
    order = epoch_order(200, 32, 5, 1)
    assert np.array_equal(full_batches[6][1], y[order[0]])


@pytest.mark.parametrize("n", [1, 64, 65])
def test_evaluation_batches_keep_every_face_in_order(n):
    x = np.random.default_rng(0).integers(0, 256, (n, 48, 48), dtype=np.uint8)
    y = np.arange(n, dtype=np.int32) % 7
    batches = list(make_tf_dataset(x, y, 64, training=False))
    faces = np.concatenate([a.numpy() for a, _ in batches])
    labels = np.concatenate([b.numpy() for _, b in batches])
    assert np.array_equal(faces[..., 0], x.astype(np.float32)) and np.array_equal(labels, y)


def test_faces_that_are_not_packed_uint8_are_refused():
    y = np.zeros(4, np.int32)
    with pytest.raises(TypeError, match="uint8"):
        make_tf_dataset(np.zeros((4, 48, 48), np.float32), y, 2, training=False)
    with pytest.raises(TypeError, match="uint8"):
        make_train_dataset(np.zeros((4, 48, 48, 1), np.uint8), y, 2, seed=0, first_epoch=0, epochs=1)
