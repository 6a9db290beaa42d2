"""The Python API as notebook users meet it: models from open_scene, lazy predict, DN from odc-stac and
stackstac, time stacks."""

from __future__ import annotations

import logging

import dask
import numpy as np
import odc.stac
import pystac
import pytest
import stackstac

import cloudmask
from cloudmask.api import scene_of


@pytest.fixture(scope="module")
def items(sample_items: list[pystac.Item]) -> list[pystac.Item]:
    out = []
    for it in sorted(sample_items, key=lambda i: i.datetime):  # the second has a 35 % nodata wedge
        it = it.clone()
        it.make_asset_hrefs_absolute()
        out.append(it)
    return out


def test_predict_uses_the_model_open_scene_recorded(items: list[pystac.Item]) -> None:
    ds = cloudmask.open_scene(items[0], "ukis-4b-l2a")
    assert ds.attrs["model"] == "ukis-4b-l2a" and set(ds.data_vars) == {"blue", "green", "red", "nir"}
    mask = cloudmask.predict(ds)  # no model given: the 4-band one, not the 6-band default
    assert mask.attrs["model"] == "ukis-4b-l2a"


def test_predict_warns_when_resolution_differs(items: list[pystac.Item], caplog) -> None:
    ds = cloudmask.open_scene(items[0], "ukis-4b-l2a", resolution=60)
    with caplog.at_level(logging.WARNING, logger="cloudmask"):
        cloudmask.predict(ds).compute()
    assert any("at 60 m" in r.getMessage() and "trained at 30 m" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cloudmask"):
        cloudmask.predict(cloudmask.open_scene(items[0], "ukis-4b-l2a")).compute()
    assert not [r for r in caplog.records if "trained at" in r.getMessage()]


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_on_dask_input_is_lazy_and_equals_eager(items: list[pystac.Item]) -> None:
    ds = cloudmask.open_scene(items[1], "ukis-4b-l2a")
    lazy = cloudmask.predict(ds)
    assert dask.is_dask_collection(lazy.data)  # nothing computed yet
    eager = cloudmask.predict(ds.compute())  # a loaded copy (ds.load() would load ds itself)
    assert not dask.is_dask_collection(eager.data)
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert (lazy.values == 255).any() and (lazy.values != 255).any()  # scene 2 has a nodata wedge
    both = cloudmask.predict(ds, probabilities=True)
    assert dask.is_dask_collection(both["probability"].data)
    np.testing.assert_array_equal(both["mask"].values, eager.values)


def test_to_reflectance_from_odc_stac_and_stackstac(items: list[pystac.Item]) -> None:
    it = items[0]
    spec = scene_of(it)
    gb = spec.geobox(10.0)
    ref = cloudmask.open_scene(it, bands=["blue", "red", "nir"], resolution=10).load()

    dn = odc.stac.load([it], bands=["blue", "red", "nir"], geobox=gb)
    assert dn["red"].dtype == np.uint16
    refl = cloudmask.to_reflectance(dn, [it])
    for b in ("blue", "red", "nir"):
        np.testing.assert_array_equal(refl[b].isel(time=0).values, ref[b].values)
    assert float(refl["red"].min()) < 0.5 and refl["red"].dtype == np.float32  # offset -0.1 and scale applied

    epsg = int(str(spec.crs).split(":")[-1])
    st = stackstac.stack([it], assets=["blue", "red", "nir"], epsg=epsg, resolution=10,
                         bounds=tuple(gb.boundingbox), fill_value=np.nan, rescale=False)
    refl2 = cloudmask.to_reflectance(st, [it])
    assert list(refl2["band"].values) == ["blue", "red", "nir"]
    np.testing.assert_array_equal(refl2.sel(band="red").isel(time=0).values, ref["red"].values)


def test_to_reflectance_names_unknown_bands(items: list[pystac.Item]) -> None:
    dn = odc.stac.load([items[0]], bands=["red"], resolution=60)
    with pytest.raises(cloudmask.CloudmaskError, match="which band"):
        cloudmask.to_reflectance(dn.rename(red="something"), [items[0]])


def test_open_scene_time_stack_and_solar_day(items: list[pystac.Item]) -> None:
    stack = cloudmask.open_scene(list(reversed(items)), "ukis-4b-l2a")
    assert stack.sizes["time"] == 3
    assert list(stack["id"].values) == [it.id for it in items]  # ascending time
    assert (np.diff(stack["time"].values) > np.timedelta64(0)).all()

    # the scene with a nodata wedge, and a second strip of the same solar day without one
    wedge, full = items[1], items[0].clone()
    full.id = "same-day-other-strip"
    full.datetime = wedge.datetime
    merged = cloudmask.open_scene([wedge, full], "ukis-4b-l2a", groupby="solar_day")
    assert merged.sizes["time"] == 1 and str(merged["id"].values[0]) == f"{wedge.id}+same-day-other-strip"
    a = cloudmask.open_scene(wedge, "ukis-4b-l2a")["red"].values
    b = cloudmask.open_scene(full, "ukis-4b-l2a")["red"].values
    m = merged["red"].isel(time=0).values
    assert np.isnan(a).any() and not np.isnan(m).any()
    np.testing.assert_array_equal(m, np.where(np.isnan(a), b, a))
