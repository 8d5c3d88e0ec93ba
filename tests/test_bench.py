"""The benchmarks' own arithmetic (their timings are measurements, not tests)."""

from bench.training import forward_multiply_adds
from emotion_core.models import build_model


def test_multiply_adds_of_vgg_mid_at_40_px_are_its_layers_counted_by_hand():
    # conv 1->24 at 40x40, pool, 24->64 at 20x20, pool, 64->128 and 128->128 at 10x10, pool,
    # 128->256 and 256->256 at 5x5 (3x3 kernels), then dense 256->128 and 128->7
    convs = 40 * 40 * 24 * 9 + 20 * 20 * 64 * 9 * 24 + 10 * 10 * 128 * 9 * (64 + 128) + 5 * 5 * 256 * 9 * (128 + 256)
    assert forward_multiply_adds(build_model("vgg_mid", 40, 7)) == convs + 256 * 128 + 128 * 7


def test_multiply_adds_grow_with_the_face_area_for_an_any_size_network():
    small, large = (forward_multiply_adds(build_model("res_mid", size, 7)) for size in (40, 48))
    dense = 256 * 128 + 128 * 7  # res_mid's head, the same at every size
    assert (large - dense) == (small - dense) * 48**2 // 40**2
