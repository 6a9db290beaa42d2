"""Pixel models on real rasters (issue 23): the fast path (strips read ahead with the normalisation
folded into the DN scaling, dense packing, argmax on the scores, slice scatter) gives the mask and
probabilities of the unoptimised path: read the scene, normalise, run every valid pixel, softmax,
argmax."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import rasterio
from onnx import TensorProto, helper, numpy_helper, save

from cloudmask.card import ModelCard
from cloudmask.engine import StreamConfig
from cloudmask.engine.blender import PixelBlender, softmax
from cloudmask.engine.messages import PixelRun, StripCut
from cloudmask.engine.stats import StreamStats
from cloudmask.models import NODATA
from cloudmask.pipeline import mask_scene_spec
from cloudmask.profiles import scene_spec
from cloudmask.reader import RasterSource, ReaderConfig
from cloudmask.runtime import make_runners
from cloudmask.sample import make_scene

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")  # 4 bands at 10 m, 2 at 20 m


def _mlp6(tmp_path: Path, classes: tuple[str, ...]) -> ModelCard:
    """A 6 -> 12 -> K MLP (logits), ``[N, 6]`` with ``N`` open: the hidden layer is ``relu(x), relu(-x)``
    and logit ``k`` is normalised band ``(3, 0, 4)[k]`` plus a little of the others (a mixed mask)."""
    k = len(classes)
    w0, b0 = np.concatenate([np.eye(6), -np.eye(6)]).astype(np.float32), np.zeros(12, np.float32)
    pick = np.full((k, 6), 0.1, np.float32)
    for row, band in enumerate((3, 0, 4)[:k]):
        pick[row, band] = 1.0
    w1, b1 = np.concatenate([pick, -pick], axis=1), np.zeros(k, np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W0", "b0"], ["z"], transB=1), helper.make_node("Relu", ["z"], ["h"]),
         helper.make_node("Gemm", ["h", "W1", "b1"], ["logits"], transB=1)],
        "mlp6", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
        [numpy_helper.from_array(a, n) for a, n in ((w0, "W0"), (b0, "b0"), (w1, "W1"), (b1, "b1"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "mlp6.onnx"))
    return ModelCard(name="mlp6", onnx_path=tmp_path / "mlp6.onnx", bands=BANDS, product_level="l2a",
                     resolution=10.0, mean=(0.0813, 0.0927, 0.1041, 0.2566, 0.2019, 0.1487),
                     std=(0.0517, 0.0493, 0.0611, 0.1033, 0.0797, 0.0713),
                     patch_size=1, classes=classes, kind="pixel", output="logits")


def _unoptimised(spec, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """The reference: the whole scene read plainly, normalised, every valid pixel run, softmax, argmax."""
    with RasterSource(spec, card.bands, spec.geobox(card.resolution)) as src:
        refl = src.read_rows(0, src.shape[0])
    valid = ~np.isnan(refl).any(axis=0)
    x = np.ascontiguousarray(card.normalise(refl)[:, valid].T)
    sess = onnxruntime.InferenceSession(str(card.onnx_path), providers=["CPUExecutionProvider"])
    probs = softmax(sess.run(None, {"x": x})[0], axis=1)
    classes = np.full(valid.shape, NODATA, np.uint8)
    classes[valid] = np.argmax(probs, axis=1)
    pct = np.zeros((probs.shape[1], *valid.shape), np.uint8)
    pct[:, valid] = np.rint(100.0 * probs.T).astype(np.uint8)
    return classes, pct


@pytest.mark.parametrize(("wedge", "classes"), [(0.0, ("clear", "cloud")), (0.4, ("clear", "cloud", "shadow"))])
def test_pixel_stream_on_a_scene_equals_the_unoptimised_path(tmp_path, wedge, classes):
    item = make_scene(tmp_path / "scene", "s", size=120, seed=3, nodata_wedge=wedge)
    spec = scene_spec(item)
    card = _mlp6(tmp_path, classes)
    expected, expected_pct = _unoptimised(spec, card)
    assert (expected == NODATA).any() == (wedge > 0)
    assert len(np.unique(expected[expected != NODATA])) == len(classes)  # a mask worth comparing
    for probabilities in (False, True):
        # 1,000-pixel blocks over 16-row (1,920-pixel) strips: blocks span strips, strips span blocks
        runners = make_runners(card, "onnxruntime", instances=2, block=1000)
        out = tmp_path / f"out-{probabilities}"
        res = mask_scene_spec(spec, out, card, runners=runners,
                              stream=StreamConfig(strip_rows=16, probabilities=probabilities))
        with rasterio.open(res.mask) as ds:
            # equal: folding the normalisation into the DN scaling moves a logit by float32 rounding
            # (~1e-7), which could flip only an exact tie (none with these statistics)
            assert np.array_equal(ds.read(1), expected)
        if probabilities:
            assert res.probabilities is not None
            with rasterio.open(res.probabilities) as ds:
                got = ds.read()
            # the fold (normalisation in the DN scaling) moves a logit by float32 rounding: 1 percent at most
            ok = expected != NODATA
            assert np.abs(got[:, ok].astype(int) - expected_pct[:, ok].astype(int)).max() <= 1


def test_pixel_blender_dense_strips_take_slices_and_two_class_argmax_ties_go_to_class_0():
    card = ModelCard(name="m", onnx_path=Path("m.onnx"), bands=BANDS, product_level="l2a", resolution=10.0,
                     mean=(0.0,) * 6, std=(1.0,) * 6, patch_size=1, classes=("clear", "cloud"), kind="pixel")
    b = PixelBlender(card, width=3, n_strips=2, probabilities=False, stats=StreamStats())
    assert b.cut(StripCut(0, 0, 2, None, 6)) == []  # every pixel valid: no index
    assert b.cut(StripCut(1, 2, 1, np.array([2]))) == []
    # [N, K] logits of one block: pixels 0-5 -> strip 0, pixel 6 -> strip 1 (its valid pixel 2)
    logits = np.array([[0, 1], [1, 0], [2, 2], [0, 3], [-1, -2], [5, 5.5], [0, 9]], np.float32)
    blocks = b.feed([PixelRun(0, 0, 6, 0), PixelRun(1, 0, 1, 6)], logits, 7)
    assert [blk.row for blk in blocks] == [0, 2] and b.is_done
    assert blocks[0].classes.tolist() == [[1, 0, 0], [1, 0, 1]]
    assert blocks[1].classes.tolist() == [[NODATA, NODATA, 1]]
    with pytest.raises(ValueError, match="count"):
        StripCut(0, 0, 1, None)


@pytest.mark.parametrize(("rows", "cols"), [((40, 122), (100, 500)), ((37, 121), (1, 599)), ((0, 200), None)])
def test_coarser_band_repeated_at_native_size_equals_nearest_upsampling(sample_items, rows, cols):
    """Aligned strips (even rows and columns of a 20 m band on the 10 m grid) are scaled at native size
    and repeated; odd ones index each axis: both give each grid pixel its native pixel, NaN at nodata."""
    spec = scene_spec(sample_items[1])  # the wedge: nodata inside the strips
    c0, c1 = cols or (0, 600)
    valid = np.ones((rows[1] - rows[0], c1 - c0), bool)
    with RasterSource(spec, ("swir16", "blue"), spec.geobox(10.0), ReaderConfig(use_footprint=False)) as src:
        got = src.read_rows(*rows, cols=cols, valid=valid, affine=(np.array([2.0, 1.0]), np.array([0.5, 0.0])))
    a = spec.bands["swir16"]
    with rasterio.open(a.href) as ds:
        native = ds.read(1)
    up = np.repeat(np.repeat(native, 2, 0), 2, 1)[rows[0] : rows[1], c0:c1]
    expected = np.where(up == 0, np.nan, (up * a.scale + a.offset) * 2.0 + 0.5)
    assert np.isnan(expected).any() and not np.isnan(expected).all()
    assert np.allclose(got[0], expected, atol=1e-5, equal_nan=True)
    assert np.array_equal(valid, ~np.isnan(got).any(axis=0))


def test_pixel_strips_line_up_with_cog_block_rows_within_a_memory_budget():
    from cloudmask.engine.strategies import PIXEL_STRIP_BYTES, pixel_strip_rows

    assert pixel_strip_rows(65_536, 10_980, 6) == 512  # 4 bands at 10 m + 2 at 20 m: one 512-row block row
    for bands in (10, 13, 30):
        rows = pixel_strip_rows(65_536, 10_980, bands)
        assert rows in (128, 256) and (rows == 128 or bands * rows * 10_980 * 4 <= PIXEL_STRIP_BYTES)
    assert pixel_strip_rows(1_000, 150, 10) % 128 == 0
