"""Pixels through the provider profiles and through a real STAC API.

* one synthetic scene published three ways (Earth Search c1, older Earth Search l2a with the offset flag,
  Planetary Computer with baseline 04.00 and no raster:bands) gives identical masks;
* ``cloudmask run --stac http://127.0.0.1:PORT`` masks the sample scenes through stac-fastapi-pgstac,
  and the masks equal those of the static-catalogue run.
"""

from __future__ import annotations

import copy

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner

from cloudmask.cli import main
from cloudmask.models import load_model
from cloudmask.pipeline import mask_scene_spec
from cloudmask.profiles import scene_spec

ES_TO_PC = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
            "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "swir16": "B11", "swir22": "B12",
            "scl": "SCL"}


def _absolute(item: pystac.Item) -> dict:
    it = item.clone()
    it.make_asset_hrefs_absolute()
    d = it.to_dict(transform_hrefs=False)
    d["links"] = []
    return d


def as_earth_search_l2a(d: dict) -> dict:
    """The older Earth Search collection: offset applied flag, raster offset that must not be trusted."""
    d = copy.deepcopy(d)
    d["collection"] = "sentinel-2-l2a"
    d["id"] = d["id"].replace("_L2A", "_ES_L2A")
    d["properties"]["earthsearch:boa_offset_applied"] = True
    for a in d["assets"].values():
        for rb in a.get("raster:bands", []):
            rb["offset"] = 0.0  # inconsistent on purpose: the flag wins
    return d


def as_planetary_computer(d: dict) -> dict:
    """Planetary Computer layout: B02-style keys, no raster:bands, baseline from s2:processing_baseline."""
    d = copy.deepcopy(d)
    d["collection"] = "sentinel-2-l2a"
    d["id"] = d["id"].replace("_L2A", "_PC_L2A")
    d["properties"]["s2:processing_baseline"] = "04.00"
    assets = {}
    for key, a in d["assets"].items():
        if key in ES_TO_PC:
            a = dict(a)
            a.pop("raster:bands", None)
            assets[ES_TO_PC[key]] = a
    d["assets"] = assets
    d["stac_extensions"] = [e for e in d["stac_extensions"] if "raster" not in e]
    return d


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_three_layouts_give_identical_masks(sample_items, tmp_path):
    base = _absolute(sample_items[1])  # the scene with a nodata wedge
    layouts = {"c1": base, "es-l2a": as_earth_search_l2a(base), "pc": as_planetary_computer(base)}
    specs = {name: scene_spec(d) for name, d in layouts.items()}
    assert specs["c1"].profile == "earth-search-c1-l2a"
    assert specs["es-l2a"].profile == "earth-search-l2a"
    assert specs["pc"].profile == "planetary-computer"
    for spec in specs.values():
        assert spec.bands["red"].offset == -0.1 and spec.bands["red"].scale == 1e-4
    masks = {}
    for name, spec in specs.items():
        res = mask_scene_spec(spec, tmp_path / name, load_model("ukis-4b-l2a"))
        with rasterio.open(res.mask) as ds:
            masks[name] = ds.read(1)
            assert ds.transform == specs["c1"].geobox(30).transform
    assert (masks["c1"] == 255).any() and (masks["c1"] != 255).any()
    assert np.array_equal(masks["c1"], masks["es-l2a"])
    assert np.array_equal(masks["c1"], masks["pc"])


def test_run_through_stac_api_equals_static_run(stac_api, sample_catalog, sample_items, tmp_path):
    coll = pystac.Collection.from_file(str(sample_catalog.parent / "sentinel-2-c1-l2a" / "collection.json"))
    cdoc = coll.to_dict(include_self_link=False, transform_hrefs=False)
    cdoc["links"] = []
    docs = [_absolute(it) for it in sample_items]
    for d in docs:  # an API serves hrefs as URLs: local files become file:// URIs
        for a in d["assets"].values():
            a["href"] = "file://" + a["href"]
    stac_api.load(cdoc, docs)
    try:
        _run_and_compare(stac_api, sample_catalog, sample_items, tmp_path)
    finally:  # leave the session server as we found it (other tests count its items)
        stac_api.unload("sentinel-2-c1-l2a", [d["id"] for d in docs])


def _run_and_compare(stac_api, sample_catalog, sample_items, tmp_path):
    bbox = ",".join(str(v) for v in sample_items[0].bbox)
    cli = CliRunner()
    common = ["--collection", "sentinel-2-c1-l2a", "--bbox", bbox, "--model", "ukis-4b-l2a", "--no-quicklook",
              "--no-progress"]
    api = cli.invoke(main, ["run", "--stac", stac_api.url, "--out", str(tmp_path / "api"), *common])
    assert api.exit_code == 0, api.output
    static = cli.invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "static"), *common])
    assert static.exit_code == 0, static.output
    api_masks = sorted((tmp_path / "api").glob("*_cloudmask.tif"))
    static_masks = sorted((tmp_path / "static").glob("*_cloudmask.tif"))
    assert [p.name for p in api_masks] == [p.name for p in static_masks]
    assert len(api_masks) == len(sample_items)
    for a, b in zip(api_masks, static_masks, strict=True):
        with rasterio.open(a) as da, rasterio.open(b) as db:
            assert np.array_equal(da.read(1), db.read(1))
            assert da.transform == db.transform and da.crs == db.crs
    # filters go through the API: a cloud limit keeps only the matching scenes
    few = cli.invoke(main, ["search", "--stac", stac_api.url, "--collection", "sentinel-2-c1-l2a", "--bbox", bbox,
                            "--max-cloud", "40"])
    assert few.exit_code == 0, few.output
    expected = {it.id for it in sample_items if it.properties["eo:cloud_cover"] <= 40}
    listed = {ln.split()[0] for ln in few.output.splitlines()[2:] if ln.strip()}
    assert listed == expected
