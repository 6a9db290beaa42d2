"""s2cloudless built in: exact ONNX conversion, cache keyed by version, and the issue's done-when on real L1C arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import shared_dir

s2c = pytest.importorskip("s2cloudless")
pytest.importorskip("onnxmltools")

from cloudmask.builtin import s2cloudless as builtin  # noqa: E402
from cloudmask.models import list_models, load_model  # noqa: E402

S2_NAMES = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
            "cirrus", "swir16", "swir22"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache directory for this module: the graph is converted once here."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("cache")
    mp.setenv("CLOUDMASK_CACHE_DIR", str(root))
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def arrays():
    z = np.load(shared_dir("data", "real", "s2cloudless-l1c-arrays") / "input_arrays.npz")
    return z["s2_im"][0]


def test_listed_without_converting(cache):
    cards = {c.name: c for c in list_models()}
    card = cards["s2cloudless"]
    assert not card.onnx_path.exists() and card.onnx_path.is_relative_to(cache)
    assert card.kind == "pixel" and card.product_level == "l1c" and card.resolution == 10
    assert card.bands == ("coastal", "blue", "red", "rededge1", "nir", "nir08", "nir09", "cirrus", "swir16", "swir22")
    assert card.classes == ("clear", "cloud") and card.output == "probabilities"
    assert card.version == builtin.package_version()


def test_converted_once_into_the_cache_keyed_by_version(cache):
    card = load_model("s2cloudless")
    assert card.onnx_path == cache / "s2cloudless" / builtin.package_version() / "s2cloudless.onnx"
    stamp = card.onnx_path.stat().st_mtime_ns
    assert load_model("s2cloudless").onnx_path.stat().st_mtime_ns == stamp  # not converted again
    import onnx

    graph = onnx.load(str(card.onnx_path)).graph
    assert [o.name for o in graph.output] == ["probabilities"]
    assert any(n.op_type == "TreeEnsembleClassifier" for n in graph.node)


def test_onnx_equals_lightgbm_on_real_pixels(cache, arrays):
    import onnxruntime as ort

    card = load_model("s2cloudless")
    det = s2c.S2PixelCloudDetector(all_bands=True)
    ref = det.get_cloud_probability_maps(arrays[None])[0]
    idx = [S2_NAMES.index(b) for b in card.bands]
    sess = ort.InferenceSession(str(card.onnx_path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"reflectance": arrays[..., idx].reshape(-1, 10)})[0]
    assert out.shape == (arrays.shape[0] * arrays.shape[1], 2)
    assert np.abs(out[:, 1].reshape(ref.shape) - ref).max() < 1e-5
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_predict_done_when(cache, arrays):
    """The issue's criteria: probabilities within 0.01 mean / 0.03 max, mask = p > 0.4 on >= 99.5 %,
    with s2cloudless's post-processing on, = get_cloud_masks on >= 99 %."""
    import cloudmask

    det = s2c.S2PixelCloudDetector(all_bands=True, threshold=0.4, average_over=4, dilation_size=2)
    ref = det.get_cloud_probability_maps(arrays[None])[0]
    mask, probs, valid = cloudmask.predict(arrays, model="s2cloudless", bands=S2_NAMES, probabilities=True,
                                           valid=True)
    assert probs.shape == (2, *ref.shape) and valid.all()
    err = np.abs(probs[1] / 100.0 - ref)
    assert err.mean() <= 0.01 and err.max() <= 0.03
    assert (mask == (ref > 0.4)).mean() >= 0.995
    ref_mask = det.get_cloud_masks(arrays[None])[0]
    post = cloudmask.predict(arrays, model="s2cloudless", bands=S2_NAMES,
                             postprocess={"average_over": 4, "dilation_size": 2})
    assert (post == ref_mask).mean() >= 0.99
    # --threshold moves the decision (on a crop, to keep the test short)
    strict = cloudmask.predict(arrays[:256, :256], model="s2cloudless", bands=S2_NAMES, threshold=0.8)
    crop = ref[:256, :256]
    assert (strict == (crop > 0.8)).mean() >= 0.995 and strict.sum() < mask[:256, :256].sum()


def test_nodata_pixels_stay_nodata_with_zero_probability(cache, arrays):
    import cloudmask

    cut = arrays[:64, :64].copy()
    cut[:10] = np.nan
    mask, probs, valid = cloudmask.predict(cut, model="s2cloudless", bands=S2_NAMES, probabilities=True, valid=True,
                                           postprocess={"average_over": 2, "dilation_size": 1})
    assert (mask[:10] == 255).all() and not valid[:10].any() and valid[10:].all()
    assert (probs[:, :10] == 0).all() and (probs[:, 10:].sum(axis=0) >= 99).all()


def test_xarray_predict_applies_the_card_threshold(cache, arrays):
    import xarray as xr

    import cloudmask

    crop = arrays[:96, :80]
    da = xr.DataArray(np.moveaxis(crop, -1, 0), dims=("band", "y", "x"),
                      coords={"band": S2_NAMES, "y": np.arange(96) * -10.0, "x": np.arange(80) * 10.0})
    ds = cloudmask.predict(da, model="s2cloudless", probabilities=True)
    numpy_mask, numpy_probs = cloudmask.predict(crop, model="s2cloudless", bands=S2_NAMES, probabilities=True)
    assert np.array_equal(ds["mask"].values, numpy_mask)
    assert list(ds["probability"]["class"].values) == ["clear", "cloud"]
    assert np.array_equal(ds["probability"].values, numpy_probs)


def test_metis_check_says_tree_ensembles_are_not_metis_operators(cache):
    from click.testing import CliRunner

    from cloudmask.cli import main

    card = load_model("s2cloudless")
    res = CliRunner().invoke(main, ["metis", "check", str(card.onnx_path), "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    text = json.dumps(report)
    assert "tree ensembles" in text and "are not Metis operators" in text and "run this model on the CPU" in text


def test_pipeline_on_native_l1c_jp2_equals_s2cloudless(cache, tmp_path):
    """A real L1C scene (native 10/20/60 m JP2 files) through the pipeline at 10 m, with s2cloudless's
    post-processing, against s2cloudless on the same reflectance."""
    import rasterio

    from cloudmask.engine import StreamConfig
    from cloudmask.pipeline import mask_scene_spec
    from cloudmask.reader import RasterSource, ReaderConfig
    from cloudmask.scene import BandAsset, SceneSpec

    d = shared_dir("data", "real", "s2-l1c-jp2-clip", "IMG_DATA")
    files = dict(zip(builtin.BANDS, ["B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"],
                     strict=True))
    bands = {b: BandAsset(b, str(d / f"T31TDH_20150726T105026_{n}.jp2"), 1e-4, 0.0, 0) for b, n in files.items()}
    spec = SceneSpec("jp2", bands, "EPSG:32631", (399960.0, 4690200.0, 402960.0, 4693200.0), "l1c")
    res = mask_scene_spec(spec, tmp_path, load_model("s2cloudless"), stream=StreamConfig(probabilities=True),
                          postprocess={"average_over": 4, "dilation_size": 2})
    src = RasterSource(spec, builtin.BANDS, spec.geobox(10.0), ReaderConfig(overviews=False))
    refl = np.moveaxis(src.read_rows(0, 300), 0, -1)[None]
    src.close()
    det = s2c.S2PixelCloudDetector(average_over=4, dilation_size=2)
    prob = det.get_cloud_probability_maps(refl)[0]
    with rasterio.open(res.mask) as m, rasterio.open(res.probabilities) as p:
        mask, p_cloud = m.read(1), p.read(2) / 100.0
        assert m.res == (10.0, 10.0) and mask.shape == (300, 300)
    assert np.abs(p_cloud - prob).max() <= 0.005
    assert (mask == det.get_mask_from_prob(prob[None])[0]).mean() >= 0.99
    assert res.extra["postprocess"] == {"thresholds": {"cloud": 0.4}, "average_over": 4, "dilation_size": 2}
