"""Reader: every band lands on the model grid, whatever its native resolution."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from cloudmask.errors import GridError, ReadError
from cloudmask.profiles import scene_spec
from cloudmask.reader import RasterSource, ReaderConfig


def test_coarser_band_is_nearest_upsampled_exactly(sample_items):
    spec = scene_spec(sample_items[0])
    src = RasterSource(spec, ("swir16", "blue"), spec.geobox(10.0))
    got = src.read_rows(37, 121)  # odd offsets: half a native 20 m pixel
    src.close()
    a = spec.bands["swir16"]
    with rasterio.open(a.href) as ds:
        native = ds.read(1).astype(np.float64)
    up = np.repeat(np.repeat(native, 2, 0), 2, 1)[37:121] * a.scale + a.offset
    assert np.allclose(got[0], up, atol=1e-6)
    b = spec.bands["blue"]
    with rasterio.open(b.href) as ds:  # same resolution: the pixels themselves
        same = ds.read(1)[37:121].astype(np.float64) * b.scale + b.offset
    assert np.allclose(got[1], same, atol=1e-6)


@pytest.mark.parametrize("overviews", [False, True])
def test_finer_band_is_area_averaged(sample_items, overviews):
    spec = scene_spec(sample_items[0])
    src = RasterSource(spec, ("blue",), spec.geobox(30.0), ReaderConfig(overviews=overviews))
    got = src.read_rows(0, 200)[0]
    src.close()
    b = spec.bands["blue"]
    with rasterio.open(b.href) as ds:
        native = ds.read(1)[:600].astype(np.float64)
    exact = native.reshape(200, 3, 200, 3).mean(axis=(1, 3)) * b.scale + b.offset
    err = np.abs(got - exact)
    if overviews:  # from the 20 m overview: close to, not equal to, the exact 3x3 mean
        assert err.mean() < 0.005
    else:
        assert err.max() < 1e-4 + 1e-6  # exact up to uint16 rounding by GDAL


def test_band_in_another_crs_is_refused(sample_items, tmp_path):
    from dataclasses import replace

    spec = scene_spec(sample_items[0])
    bad = replace(spec, crs="EPSG:32632")
    src = RasterSource(bad, ("blue",), bad.geobox(30.0))
    with pytest.raises(GridError, match="EPSG:32632"):
        src.read_rows(0, 10)
    src.close()


def test_lazy_dask_array_matches_row_reads(sample_items):
    spec = scene_spec(sample_items[1])
    src = RasterSource(spec, ("red", "nir"), spec.geobox(30.0))
    lazy = src.to_dask()
    assert lazy.shape == (2, 200, 200) and lazy.dtype == np.float32
    whole = lazy.compute(scheduler="threads")
    rows = src.read_rows(50, 150)
    src.close()
    assert np.array_equal(np.isnan(whole[:, 50:150]), np.isnan(rows))
    assert np.allclose(whole[:, 50:150], rows, equal_nan=True)
    assert np.isnan(whole).any()  # the wedge scene has nodata


def test_footprint_skips_reading_but_loses_no_pixel(sample_items):
    spec = scene_spec(sample_items[1])  # the scene with a 35 % nodata wedge
    fast = RasterSource(spec, ("red", "swir16"), spec.geobox(30.0))
    full = RasterSource(spec, ("red", "swir16"), spec.geobox(30.0), ReaderConfig(use_footprint=False))
    c0, c1 = fast.footprint_cols(0, 20)
    assert c0 > 0 and c1 == 200  # the wedge cuts the top-left corner: those columns are not read
    a, b = fast.read_rows(0, 200), full.read_rows(0, 200)
    fast.close()
    full.close()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.allclose(a, b, equal_nan=True)


def _prepare(x: np.ndarray) -> None:
    x *= 2.0
    x += 1.0


@pytest.mark.parametrize("ahead", [True, False])
def test_row_windows_match_whole_reads(sample_items, ahead):
    from cloudmask.reader import RowWindows

    spec = scene_spec(sample_items[1])  # nodata wedge: invalid pixels are filled
    with RasterSource(spec, ("red", "swir16", "nir"), spec.geobox(30.0)) as src:
        whole = src.read_rows(0, 200)
        windows = [(0, 40), (20, 70), (60, 70), (60, 130), (130, 200), (150, 200)]
        rw = RowWindows(src, windows, prepare=_prepare, fill=-5.0, ahead=ahead)
        got = [(d.copy(), v.copy()) for d, v in rw]
    assert len(got) == len(windows)
    for (a, b), (data, valid) in zip(windows, got, strict=True):
        ref = whole[:, a:b]
        ok = ~np.isnan(ref).any(axis=0)
        assert data.shape == ref.shape and np.array_equal(valid, ok)
        assert np.allclose(data[:, ok], ref[:, ok] * 2.0 + 1.0)
        assert np.all(data[:, ~ok] == -5.0)
    assert (~got[0][1]).any()  # the wedge is there
    assert rw.seconds["read"] > 0


def test_row_windows_refuse_going_back(sample_items):
    from cloudmask.reader import RowWindows

    with pytest.raises(ValueError, match="go back"):
        RowWindows(None, [(0, 50), (10, 40)])


def test_row_windows_over_an_array_source():
    from cloudmask.engine.io import ArraySource
    from cloudmask.reader import RowWindows

    data = np.arange(2 * 30 * 5, dtype=np.float32).reshape(2, 30, 5)
    data[1, 3, 2] = np.nan
    got = [d.copy() for d, _ in RowWindows(ArraySource(data), [(0, 10), (5, 20), (20, 30)])]
    assert np.array_equal(got[1], data[:, 5:20]) and np.array_equal(got[2], data[:, 20:30])
    assert got[0][0, 3, 2] == 0 and got[0][1, 3, 2] == 0  # invalid in one band: filled in all


def test_prefetch_serves_later_reads_and_closes_cleanly(sample_items):
    spec = scene_spec(sample_items[0])
    with RasterSource(spec, ("blue", "swir16"), spec.geobox(30.0)) as plain:
        ref = plain.read_rows(0, 120)
    src = RasterSource(spec, ("blue", "swir16"), spec.geobox(30.0))
    src.prefetch(0, 120)
    got = src.read_rows(10, 60)  # inside the prefetched rows
    assert np.array_equal(got, ref[:, 10:60], equal_nan=True)
    again = src.read_rows(60, 120)  # the prefetch was used up: a plain read
    assert np.array_equal(again, ref[:, 60:120], equal_nan=True)
    src.prefetch(0, 120)
    src.close()  # with a prefetch in flight or done: returns, and the source refuses reads
    with pytest.raises(ReadError):
        src.read_rows(0, 10)


def test_overview_level_is_found_for_a_coarser_grid(sample_items):
    spec = scene_spec(sample_items[0])
    with RasterSource(spec, ("blue", "swir16"), spec.geobox(30.0)) as src:
        assert src._handles.overview_levels(src.assets[0])[:1] == [2]
        assert src._level(0) == 0  # 10 m band onto 30 m: from its 20 m overview
        assert src._level(1) is None  # 20 m band: 40 m overview is too coarse
    with RasterSource(spec, ("blue",), spec.geobox(30.0), ReaderConfig(overviews=False)) as src:
        assert src._level(0) is None


def test_read_rows_of_some_columns_match_whole_rows(sample_items):
    spec = scene_spec(sample_items[1])  # the wedge: the footprint cuts the first columns of the top rows
    with RasterSource(spec, ("red", "swir16"), spec.geobox(30.0)) as src:
        whole = src.read_rows(0, 60)
        for c0, c1 in ((0, 7), (5, 120), (150, 200), (0, 200)):
            part = src.read_rows(0, 60, cols=(c0, c1))
            assert part.shape == (2, 60, c1 - c0)
            assert np.array_equal(part, whole[:, :, c0:c1], equal_nan=True)
            out = np.zeros((2, 60, c1 - c0), np.float32)
            assert src.read_rows(0, 60, out=out, cols=(c0, c1)) is out
            assert np.array_equal(out, whole[:, :, c0:c1], equal_nan=True)
        with pytest.raises(ValueError, match="cols"):
            src.read_rows(0, 60, cols=(50, 50))


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_first_window_in_column_parts_matches_whole_reads(sample_items, parts):
    from cloudmask.reader import RowWindows

    spec = scene_spec(sample_items[1])
    windows = [(0, 40), (20, 70), (60, 130), (130, 200)]
    with RasterSource(spec, ("red", "swir16", "nir"), spec.geobox(30.0)) as src:
        ref = [(d.copy(), v.copy()) for d, v in RowWindows(src, windows, prepare=_prepare, fill=-5.0)]
        rw = RowWindows(src, windows, prepare=_prepare, fill=-5.0, first_parts=parts)
        assert rw.first_parts == parts
        got = []
        for k, (d, v) in enumerate(rw):
            if k == 0:  # the first window comes before it is read: ask for columns first
                rw.wait_cols(30)
                left = d[:, :, :30].copy()
                rw.wait_cols(200)
                assert np.array_equal(left, d[:, :, :30])  # ready columns do not change afterwards
            got.append((d.copy(), v.copy()))
    for (a, va), (b, vb) in zip(ref, got, strict=True):
        assert np.array_equal(va, vb) and np.array_equal(a, b)


def test_first_window_parts_fall_back_without_column_reads():
    from cloudmask.engine.io import ArraySource
    from cloudmask.reader import RowWindows

    data = np.arange(2 * 30 * 5, dtype=np.float32).reshape(2, 30, 5)
    rw = RowWindows(ArraySource(data), [(0, 10), (5, 30)], first_parts=4)
    assert rw.first_parts == 1  # ArraySource.read_rows takes no columns: whole windows
    got = [d.copy() for d, _ in rw]
    assert np.array_equal(got[1], data[:, 5:30])


def test_a_failed_column_part_raises_in_the_caller(sample_items):
    from cloudmask.reader import RowWindows

    spec = scene_spec(sample_items[0])

    class Failing(RasterSource):
        def read_rows(self, start, stop, out=None, cols=None):
            if cols is not None and cols[0] > 0:
                raise ReadError("band 'red': the file is truncated")
            return super().read_rows(start, stop, out=out, cols=cols)

    with Failing(spec, ("red",), spec.geobox(30.0)) as src:
        rw = RowWindows(src, [(0, 40), (20, 60)], first_parts=3)
        with pytest.raises(ReadError, match="truncated"):
            for _ in rw:
                rw.wait_cols(200)


@pytest.mark.parametrize("prefetch", [False, True])
def test_folded_normalisation_equals_normalising_after_the_read(sample_items, prefetch):
    """The model's affine normalisation applied while DN are scaled gives what normalising the
    reflectance afterwards gives, nodata included (also when the rows come from a prefetch)."""
    from cloudmask.models import load_model
    from cloudmask.reader import RowWindows

    card = load_model("ukis-4b-l2a")
    spec = scene_spec(sample_items[1])
    windows = [(0, 40), (20, 90), (90, 200)]
    fold = card.normalisation.affine(card.n_bands)
    with RasterSource(spec, card.bands, spec.geobox(30.0)) as src:
        ref = [(d.copy(), v.copy()) for d, v in RowWindows(src, windows, prepare=card.normalise)]
        if prefetch:
            src.prefetch(0, 40)
        rw = RowWindows(src, windows, prepare=card.normalise, fold=fold, first_parts=2)
        assert rw.fold is not None
        got = []
        for d, v in rw:
            rw.wait_cols(d.shape[2])
            got.append((d.copy(), v.copy()))
    assert (~ref[0][1]).any()  # the wedge's nodata is in the first window
    for (a, va), (b, vb) in zip(ref, got, strict=True):
        assert np.array_equal(va, vb)
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5)



def test_prefetch_with_the_models_fold_becomes_the_first_window_without_a_copy(sample_items, monkeypatch):
    """A prefetch read with the card's folded normalisation is the first window itself: same values and
    valid mask as a plain read, no second read of its rows, its array used in place (not copied)."""
    from cloudmask.models import load_model
    from cloudmask.reader import RowWindows

    card = load_model("ukis-4b-l2a")
    spec = scene_spec(sample_items[1])
    windows = [(0, 50), (50, 100), (100, 150), (150, 200)]
    fold = card.read_affine
    with RasterSource(spec, card.bands, spec.geobox(30.0)) as src:
        ref = [(d.copy(), v.copy()) for d, v in RowWindows(src, windows, prepare=card.normalise, fill=None)]
    reads: list[tuple[int, int]] = []
    real = RasterSource._read

    def counted(self, start, stop, *a, **k):
        reads.append((start, stop))
        return real(self, start, stop, *a, **k)

    monkeypatch.setattr(RasterSource, "_read", counted)
    with RasterSource(spec, card.bands, spec.geobox(30.0)) as src:
        src.prefetch(0, 50, affine=fold)
        rw = RowWindows(src, windows, prepare=card.normalise, fill=None, fold=fold)
        got, first = [], None
        for d, v in rw:
            first = d if first is None else first
            got.append((d.copy(), v.copy()))
        assert first is not None and first is rw._buffers[0][0]  # the prefetch's array is window 0's buffer
    assert sorted(reads) == windows  # each window read once: the first by the prefetch
    assert (~ref[0][1]).any()  # nodata in the first window: the valid mask came with the prefetch
    for (a, va), (b, vb) in zip(ref, got, strict=True):
        assert np.array_equal(va, vb)
        assert np.allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_prefetch_with_another_normalisation_is_read_again(sample_items):
    from cloudmask.models import load_model

    card = load_model("ukis-4b-l2a")
    spec = scene_spec(sample_items[1])
    fold = card.read_affine
    other = (fold[0] * 2, fold[1])
    with RasterSource(spec, card.bands, spec.geobox(30.0)) as src:
        ref = src.read_rows(0, 40, affine=fold)
        src.prefetch(0, 40, affine=other)
        got = src.read_rows(0, 40, affine=fold)  # not served from the prefetch: its values differ
        assert not src.prefetching
    assert np.allclose(ref, got, equal_nan=True)


@pytest.mark.parametrize("prefetch", [False, True])
def test_dn_strips_scaled_by_dn_affine_equal_the_normalised_read(sample_items, prefetch):
    """``raw=True`` gives the DN on the grid (20 m bands repeated 2x2, nodata flagged in ``valid``);
    scaled with ``dn_affine`` they are bit for bit what the read with the folded normalisation gives."""
    from cloudmask.models import load_model

    card = load_model("ukis-6b-l2a")  # 4 bands at 10 m, 2 at 20 m
    spec = scene_spec(sample_items[1])  # the wedge: nodata inside the rows
    fold = card.read_affine
    with RasterSource(spec, card.bands, spec.geobox(10.0)) as src:
        assert src.dn_dtype == np.uint16
        ref_valid = np.empty((96, src.shape[1]), bool)
        ref = src.read_rows(0, 96, affine=fold, valid=ref_valid)
        if prefetch:
            src.prefetch(0, 96, affine=fold)  # reflectance: not served to a DN read
            src.prefetch(0, 96, raw=True)
        valid = np.empty_like(ref_valid)
        dn = src.read_rows(0, 96, valid=valid, raw=True)
        assert not src.prefetching
        mul, add = src.dn_affine(fold)
    assert dn.dtype == np.uint16 and np.array_equal(valid, ref_valid) and not valid.all()
    got = np.empty(dn.shape, np.float32)
    np.multiply(dn, mul.astype(np.float32)[:, None, None], out=got, casting="unsafe")
    got += add.astype(np.float32)[:, None, None]
    assert np.array_equal(got[:, valid], ref[:, valid])
    assert np.array_equal(dn[4:, 0::2, 0::2], dn[4:, 1::2, 1::2])  # the 20 m bands: each DN on 2 x 2 pixels


def test_dn_reads_are_refused_when_the_bands_share_no_integer_dtype(sample_items, monkeypatch):
    spec = scene_spec(sample_items[0])
    with RasterSource(spec, ("blue", "red"), spec.geobox(30.0)) as src:
        monkeypatch.setattr(src, "_dn_dtype", None)
        with pytest.raises(ValueError, match="integer DN dtype"):
            src.read_rows(0, 10, raw=True)


@pytest.mark.parametrize("prefetch", [False, True])
def test_valid_mask_from_the_bands_nodata_equals_no_nan(sample_items, prefetch):
    spec = scene_spec(sample_items[1])  # wedge: nodata inside the footprint's bounding columns too
    with RasterSource(spec, ("red", "swir16", "nir"), spec.geobox(30.0)) as src:
        if prefetch:
            src.prefetch(0, 120)
        seen_nodata = False
        for start, stop, cols in ((0, 60, None), (40, 120, (0, 90)), (100, 200, (120, 200))):
            valid = np.ones((stop - start, (cols or (0, 200))[1] - (cols or (0, 200))[0]), bool)
            data = src.read_rows(start, stop, cols=cols, valid=valid)
            assert np.array_equal(valid, ~np.isnan(data).any(axis=0))
            seen_nodata |= not valid.all()
        assert seen_nodata  # the wedge's nodata shows
        with pytest.raises(ValueError, match="valid must be bool"):
            src.read_rows(0, 10, valid=np.ones((10, 200), np.uint8))
