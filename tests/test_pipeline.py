"""End to end: STAC item -> COG mask; georeferencing, nodata, streaming == in memory, real-patch accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from cloudmask.engine import StreamConfig
from cloudmask.errors import ItemLayoutError, MissingBandError, ReadError
from cloudmask.inference import predict, predict_array
from cloudmask.models import NODATA, choose_model, load_model
from cloudmask.pipeline import mask_paths, mask_scene_spec, safe_name
from cloudmask.profiles import scene_spec
from cloudmask.reader import RasterSource

from .conftest import shared_dir


@pytest.fixture(scope="module")
def masked(sample_items, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    return out, [mask_scene_spec(spec, out, choose_model("auto", spec)) for spec in map(scene_spec, sample_items)]


def test_masks_are_valid_cogs_on_the_scene_grid(masked, sample_items):
    _, results = masked
    for item, res in zip(sample_items, results, strict=True):
        valid, errors, _ = cog_validate(str(res.mask))
        assert valid, errors
        spec = scene_spec(item)
        expected = spec.geobox(30.0)
        with rasterio.open(res.mask) as ds:
            assert ds.dtypes == ("uint8",) and ds.nodata == NODATA
            assert ds.crs.to_epsg() == spec.geobox(30).crs.epsg
            assert ds.transform == expected.transform
            assert (ds.height, ds.width) == expected.shape
            assert ds.overviews(1) or max(ds.shape) <= 512
            # corner of the mask = corner of the 10 m input band, exactly
            with rasterio.open(spec.bands["blue"].href) as band:
                assert (ds.transform.c, ds.transform.f) == (band.transform.c, band.transform.f)
                assert ds.bounds == band.bounds


def test_nodata_input_gives_255_never_clear(masked, sample_items):
    _, results = masked
    wedge = [r for r in results if r.fractions["nodata"] > 10]
    assert wedge, "the sample catalogue has a scene with a nodata wedge"
    res = wedge[0]
    spec = scene_spec(next(it for it in sample_items if it.id == res.scene_id))
    with rasterio.open(res.mask) as ds:
        mask = ds.read(1)
    src = RasterSource(spec, load_model("ukis-6b-l2a").bands, spec.geobox(30.0))
    refl = src.read_rows(0, mask.shape[0])
    src.close()
    invalid = np.isnan(refl).any(axis=0)
    assert invalid.any()
    assert np.array_equal(mask == NODATA, invalid)


def test_streaming_equals_in_memory(sample_items, tmp_path):
    spec = scene_spec(sample_items[0])
    card = load_model("ukis-6b-l2a")
    res = mask_scene_spec(spec, tmp_path, card)
    with rasterio.open(res.mask) as ds:
        streamed = ds.read(1)
    src = RasterSource(spec, card.bands, spec.geobox(30.0))
    whole = src.to_dask().compute(scheduler="threads")  # the scene read whole into memory
    src.close()
    in_memory = predict(np.moveaxis(whole, 0, -1), model=card)
    assert (streamed == in_memory).mean() >= 0.995


def test_item_ids_cannot_escape_output_dir(tmp_path):
    for bad in ("../../x", "/etc/passwd", "a/../../b", "..", "Ω"):
        p = mask_paths(tmp_path, bad)["mask"]
        assert p.resolve().parent == tmp_path.resolve() and p.name.endswith("_cloudmask.tif")
    with pytest.raises(ItemLayoutError, match="empty"):
        mask_paths(tmp_path, "")
    assert safe_name("S2B_T31TDH_20240612T103629_L2A") == "S2B_T31TDH_20240612T103629_L2A"


def test_missing_band_is_named(sample_items, tmp_path):
    item = sample_items[0].clone()
    del item.assets["swir16"]
    with pytest.raises(MissingBandError, match="swir16"):
        mask_scene_spec(scene_spec(item), tmp_path, load_model("ukis-6b-l2a"))
    assert not list(tmp_path.glob("*.tif")) and not list(tmp_path.glob(".*"))


def test_unreadable_asset_leaves_no_partial_file(sample_items, tmp_path):
    spec = scene_spec(sample_items[0])
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00 this is not a tiff" * 100)
    bands = dict(spec.bands)
    bands["red"] = type(bands["red"])(**{**bands["red"].__dict__, "href": str(bad)})
    from dataclasses import replace

    out = tmp_path / "out"
    with pytest.raises(ReadError, match="red"):
        mask_scene_spec(replace(spec, bands=bands), out, choose_model("auto", spec))
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------- real data (../shared)

@pytest.fixture(scope="module")
def real_patch():
    path = shared_dir("data", "real", "ukis-csmask-patch", "sentinel2.npz")
    d = np.load(path)
    msk = d["msk"][..., 0]
    truth = np.zeros(msk.shape, np.uint8)
    truth[msk == 4] = 1
    truth[msk == 0] = 2
    return d["img"], truth


def _iou(a, b, k):
    return ((a == k) & (b == k)).sum() / ((a == k) | (b == k)).sum()


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_real_patch_accuracy_and_agreement_with_csmask(real_patch):
    img, truth = real_patch
    mask = predict(img, model="ukis-6b-l1c")
    assert mask.shape == truth.shape and mask.dtype == np.uint8
    assert _iou(mask, truth, 1) >= 0.74
    assert _iou(mask, truth, 2) >= 0.69
    from ukis_csmask.mask import CSmask

    ref = CSmask(img, band_order=["blue", "green", "red", "nir", "swir16", "swir22"], product_level="l1c")
    assert (mask == ref.csm[..., 0]).mean() >= 0.97


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_array_same_as_predict(real_patch):
    img, _ = real_patch
    a = predict(img[:300, :300], model="ukis-4b-l1c", bands=["blue", "green", "red", "nir", "swir16", "swir22"])
    refl = np.moveaxis(img[:300, :300, :4], -1, 0).copy()
    b, _, stats = predict_array(refl, "ukis-4b-l1c", config=StreamConfig())
    assert np.array_equal(a, b) and stats.patches == 4


def test_real_jp2_l1c_bands_read_on_grid():
    """Native L1C JP2 files (10/20/60 m) land on one 30 m grid."""
    from cloudmask.scene import BandAsset, SceneSpec

    d = shared_dir("data", "real", "s2-l1c-jp2-clip", "IMG_DATA")
    names = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12",
             "coastal": "B01"}
    bands = {b: BandAsset(b, str(d / f"T31TDH_20150726T105026_{n}.jp2"), 1e-4, 0.0, 0) for b, n in names.items()}
    spec = SceneSpec("jp2", bands, "EPSG:32631", (399960.0, 4690200.0, 402960.0, 4693200.0), "l1c")
    from cloudmask.reader import ReaderConfig

    src = RasterSource(spec, tuple(names), spec.geobox(30.0), ReaderConfig(overviews=False))
    refl = src.read_rows(0, 100)
    src.close()
    assert refl.shape == (7, 100, 100) and not np.isnan(refl).any()
    assert 0.0 < float(np.median(refl[2])) < 0.5
    with rasterio.open(bands["blue"].href) as ds:  # 30 m = mean of 3x3 native 10 m pixels
        native = ds.read(1)[:3, :3].astype(np.float64) * 1e-4
    assert refl[0, 0, 0] == pytest.approx(native.mean(), rel=1e-3)
    mask = predict(np.moveaxis(refl[:6], 0, -1), model="ukis-6b-l1c")
    assert mask.shape == (100, 100) and (mask != NODATA).all()


def test_result_row_is_plain_numbers(masked):
    _, results = masked
    row = results[0].row()
    assert set(row) >= {"scene", "cloud", "shadow", "clear", "nodata", "seconds", "mask"}
    assert abs(row["cloud"] + row["shadow"] + row["clear"] - 100) < 0.1
    assert Path(row["mask"]).exists()


def test_result_carries_the_card_it_was_made_with(masked, sample_items):
    _, results = masked
    for item, res in zip(sample_items, results, strict=True):
        card = choose_model("auto", scene_spec(item))
        assert res.card == card and res.model == card.name
        assert res.classes == card.class_table
