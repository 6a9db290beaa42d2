"""Pure geometry: layouts, mirroring, blend weights, seam index."""

from __future__ import annotations

import numpy as np
import pytest

from cloudmask.grid import WEIGHT_FLOOR, PatchLayout, blend_weights, reflect_index, seam_index


def test_layout_covers_scene_with_cores():
    lay = PatchLayout(1000, 700, 256, 32)
    assert lay.stride == 192
    assert lay.n_rows == 6 and lay.n_cols == 4  # ceil(1000/192), ceil(700/192)
    assert lay.origin(1, 2) == (192 - 32, 384 - 32)
    assert lay.n_rows * lay.stride >= lay.height and (lay.n_rows - 1) * lay.stride < lay.height
    assert lay.redundancy() == pytest.approx(24 * 256**2 / (1000 * 700))


def test_reflect_index_matches_numpy_symmetric_pad():
    n = 7
    idx = np.arange(-20, 27)
    expected = np.pad(np.arange(n), (20, 20), mode="symmetric")
    assert np.array_equal(reflect_index(idx, n), expected)


def test_strip_rows_mirror_small_scene():
    lay = PatchLayout(34, 34, 256, 32)  # a 1 km scene at 30 m is smaller than one patch
    rows = lay.strip_rows(0)
    assert len(rows) == 256 and rows.min() == 0 and rows.max() == 33
    assert len(lay.strip_cols()) == lay.padded_width == 256


@pytest.mark.parametrize("kind", ["tukey", "linear", "hard"])
def test_blend_weights_shape_range(kind):
    w = blend_weights(256, 26, kind)
    assert w.shape == (256, 256) and w.dtype == np.float32
    assert w.min() >= WEIGHT_FLOOR**2 - 1e-12 and w.max() == pytest.approx(1.0)
    assert w[128, 128] == pytest.approx(1.0)  # centre fully trusted
    assert w[0, 128] < 0.05  # edges fade


def test_tukey_weights_sum_to_one_across_overlap():
    p, m = 256, 26
    w1 = blend_weights(p, m, "tukey")[128]
    s = p - 2 * m
    # two neighbours overlapping by 2m: the tapers are complementary
    total = w1[s:] + w1[: p - s]
    assert np.allclose(total, 1.0, atol=0.02)


def test_bad_margin_rejected():
    with pytest.raises(ValueError, match="margin"):
        PatchLayout(100, 100, 64, 32)


def test_seam_index_detects_tile_seams():
    rng = np.random.default_rng(0)
    lay = PatchLayout(600, 600, 128, 16)
    smooth = (np.add.outer(np.sin(np.arange(600) / 37.0), np.cos(np.arange(600) / 23.0)) > 0).astype(np.uint8)
    assert seam_index(smooth, lay) == pytest.approx(1.0, abs=0.5)
    seamy = smooth.copy()
    s = lay.stride
    for k in range(1, lay.n_rows):  # flip classes on one side of every core border
        seamy[k * s : k * s + 1] ^= rng.integers(0, 2, 600, dtype=np.uint8)
    assert seam_index(seamy, lay) > 2.0
