"""The notebook API: search / open_scene / mask_scene, and predict on xarray (cloudmask.xarray_predict).

Small sample scenes (600 px at 10 m -> 200 px at the models' 30 m) made once per session.
"""

from __future__ import annotations

import asyncio

import dask
import numpy as np
import pytest
import rasterio
import xarray as xr

import cloudmask
from cloudmask.api import mask_scene, open_mask, open_scene, scene_of, search
from cloudmask.errors import ConfigError, MissingBandError
from cloudmask.inference import predict
from cloudmask.models import choose_model
from cloudmask.pipeline import mask_scene_spec


@pytest.fixture(scope="session")
def all_items(sample_catalog):
    """The session's three 600 px sample scenes (cloud cover about 30, 54 and 12 %)."""
    return search(sample_catalog)


@pytest.fixture(scope="session")
def sample_items(all_items):
    return all_items[:2]


@pytest.fixture(scope="session")
def item(sample_items):
    """The scene with a nodata wedge (35 %)."""
    return sample_items[1]


@pytest.fixture(scope="session")
def reference(item, tmp_path_factory):
    """What the CLI/pipeline writes for ``item`` with the default model."""
    spec = scene_of(item)
    return mask_scene_spec(spec, tmp_path_factory.mktemp("api-ref"), choose_model("auto", spec))


@pytest.fixture(scope="session")
def predicted(item):
    return predict(open_scene(item))


def test_package_exports_the_api():
    assert cloudmask.open_scene is open_scene
    assert cloudmask.mask_scene is mask_scene
    assert cloudmask.search is search


def test_package_predict_stays_the_function():
    """``cloudmask.predict`` / ``from cloudmask import predict`` give the function, not the module."""
    from cloudmask import predict as imported
    from cloudmask.inference import predict as function

    assert imported is function
    assert cloudmask.predict is function


def test_search_filters(all_items, item):
    assert len(all_items) == 3
    cat_root = item.get_root().get_self_href()
    assert [it.id for it in search(cat_root, max_cloud=40)] == [all_items[0].id, all_items[2].id]


def test_open_scene_is_lazy_and_on_the_scene_grid(item):
    spec = scene_of(item)
    ds = open_scene(item, chunks=64)
    assert list(ds.data_vars) == ["blue", "green", "red", "nir", "swir16", "swir22"]
    for var in ds.data_vars.values():
        assert dask.is_dask_collection(var) and var.dtype == np.float32 and var.dims == ("y", "x")
    assert ds.blue.chunks[0] == (64, 64, 64, 8)
    grid = spec.geobox(30.0)
    assert ds.odc.geobox == grid
    assert ds.rio.crs == rasterio.crs.CRS.from_user_input(spec.crs)
    assert ds.rio.transform() == grid.transform
    # pixel centres
    assert float(ds.x[0]) == grid.transform.c + 15.0 and float(ds.y[0]) == grid.transform.f - 15.0
    assert ds.attrs["model"] == "ukis-6b-l2a" and ds.attrs["id"] == item.id
    assert np.datetime64(item.datetime.replace(tzinfo=None), "ns") == ds.time.values
    red = ds.red.values
    nan = np.isnan(red).mean()
    assert 0.25 < nan < 0.45  # the nodata wedge is NaN
    assert np.nanmax(red) <= 1.5 and np.nanmin(red) >= -0.2


def test_open_scene_bands_and_resolution(item):
    ds = open_scene(item, bands=["red", "green", "blue"], resolution=60)
    assert list(ds.data_vars) == ["red", "green", "blue"]
    assert ds.rio.resolution() == (60.0, -60.0) and ds.sizes == {"y": 100, "x": 100}


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_matches_the_pipeline_raster(predicted, reference, item, tmp_path):
    mask = predicted
    assert isinstance(mask, xr.DataArray) and mask.dtype == np.uint8 and mask.dims == ("y", "x")
    assert mask.attrs["flag_meanings"] == "clear cloud shadow" and mask.attrs["model"] == "ukis-6b-l2a"
    assert mask.rio.nodata == 255
    ds = open_scene(item)
    assert mask.rio.crs == ds.rio.crs and mask.rio.transform() == ds.rio.transform()
    path = tmp_path / "mask.tif"
    mask.rio.to_raster(path)
    with rasterio.open(path) as a, rasterio.open(reference.mask) as b:
        assert a.crs == b.crs and a.transform == b.transform and a.nodata == b.nodata == 255
        assert a.dtypes == b.dtypes == ("uint8",)
        np.testing.assert_array_equal(a.read(), b.read())
    assert set(np.unique(mask.values)) <= {0, 1, 2, 255} and (mask.values == 255).any()


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_dataarray_with_band_dim_and_probabilities(item, predicted):
    ds = open_scene(item)
    arr = ds.to_dataarray("band")[::-1]  # band labels, in another order
    np.testing.assert_array_equal(predict(arr).values, predicted.values)
    out = predict(ds, probabilities=True)
    assert isinstance(out, xr.Dataset)
    np.testing.assert_array_equal(out["mask"].values, predicted.values)
    prob = out["probability"]
    assert prob.dims == ("class", "y", "x") and list(prob["class"].values) == ["clear", "cloud", "shadow"]
    valid = predicted.values != 255
    total = prob.values.astype(int).sum(axis=0)[valid]
    assert np.all(np.abs(total - 100) <= 2)
    assert out["mask"].rio.transform() == ds.rio.transform()


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_numpy_backed_and_time_stack(item, sample_items, predicted):
    ds = open_scene(item).load()  # numpy-backed
    np.testing.assert_array_equal(predict(ds).values, predicted.values)
    stack = xr.concat([open_scene(it) for it in sample_items], dim="time")
    masks = predict(stack)
    assert masks.dims == ("time", "y", "x") and masks.sizes["time"] == 2
    np.testing.assert_array_equal(masks.isel(time=1).values, predicted.values)


def test_predict_errors(item):
    ds = open_scene(item)
    with pytest.raises(MissingBandError, match="swir16"):
        predict(ds.drop_vars("swir16"))
    with pytest.raises(ConfigError, match="band"):
        predict(ds.red)
    with pytest.raises(ConfigError, match="reflectance"):
        predict(ds * 10000).compute()  # DN as floats: refused (when computed) with the fix (scale=)
    raw = ((ds + 0.1) * 10000).clip(1, 65535).round().fillna(0).astype("uint16")  # L2A DN (offset -0.1), 0 nodata
    dn = predict(raw, offset=-0.1)  # integers are DN: DN * 1e-4 - 0.1, not "100 % clear"
    assert float((dn == predict(ds)).mean()) > 0.99


def test_predict_inside_a_running_event_loop(item, predicted):
    async def main():
        return predict(open_scene(item))

    np.testing.assert_array_equal(asyncio.run(main()).values, predicted.values)


def test_predict_with_a_distributed_client(item, predicted):
    from dask.distributed import Client, LocalCluster, get_task_stream

    with (
        LocalCluster(n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        get_task_stream(client) as ts,
    ):
        mask = predict(open_scene(item, chunks=64))  # lazy: computed on the cluster below
        values = mask.values
    np.testing.assert_array_equal(values, predicted.values)
    assert any("cloudmask-read" in str(t["key"]) for t in ts.data), "reads did not run on the cluster"


def test_open_scene_pickles_for_remote_workers(item):
    import pickle

    ds = open_scene(item, chunks=100)
    clone = pickle.loads(pickle.dumps(ds.red.data))  # the graph a remote worker receives
    assert clone.name == ds.red.data.name
    np.testing.assert_array_equal(clone.compute(scheduler="sync"), ds.red.values)


def test_mask_scene_writes_everything(item, reference, tmp_path):
    res = mask_scene(item, out=tmp_path / "out")
    assert res.model == "ukis-6b-l2a"
    for key in ("quicklook", "item", "catalog"):
        assert res.extra[key].is_file()
    with rasterio.open(res.mask) as a, rasterio.open(reference.mask) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert res.extra["quicklook"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    mask = open_mask(res)
    assert mask.dtype == np.uint8 and mask.attrs["model"] == "ukis-6b-l2a"
    assert mask.rio.crs == open_scene(item).rio.crs
    import pystac

    out_item = pystac.Item.from_file(str(res.extra["item"]))
    assert {"mask", "quicklook"} <= set(out_item.assets)
