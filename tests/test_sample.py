"""Synthetic Sentinel-2 scenes and the sample STAC catalogue (cloudmask.sample)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from cloudmask.sample import BANDS, TRUTH_NODATA, default_catalog_dir, make_catalog, make_scene

try:  # tests/ is a package (tests/__init__.py) ...
    from .conftest import shared_dir
except ImportError:  # ... or plain rootdir-relative test modules
    from conftest import shared_dir  # type: ignore[no-redef]

SIZE = 360  # 10 m pixels: 3.6 km, 180 px at 20 m, 60 px at 60 m
ORIGIN = (399960.0, 4800000.0)
ES_ITEMS = "data/stac/earth-search/pystac-client_cassettes/sentinel-2-c1-l2a"
BAND_FILES = {b.key: f"{b.name}.tif" for b in BANDS}


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[pystac.Item, Path]:
    out = tmp_path_factory.mktemp("scene")
    item = make_scene(out, "S2B_T31TDH_20240612T103629_L2A", size=SIZE, seed=3, nodata_wedge=0.35,
                      cloud_cover=0.3)
    return item, out / item.id


@pytest.fixture(scope="module")
def catalog(sample_catalogs: Callable[[int], Path]) -> Path:
    return sample_catalogs(SIZE)


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    for size in (0, 100, 601, 1000):
        with pytest.raises(ValueError, match="multiple of 6"):
            make_scene(tmp_path, "x", size=size)
    with pytest.raises(ValueError, match="nodata_wedge"):
        make_scene(tmp_path, "x", size=60, nodata_wedge=1.0)
    with pytest.raises(ValueError, match="cloud_cover"):
        make_scene(tmp_path, "x", size=60, cloud_cover=1.5)
    with pytest.raises(ValueError, match="UTM"):
        make_scene(tmp_path, "x", size=60, epsg=4326)
    with pytest.raises(ValueError, match="scene_id"):
        make_scene(tmp_path, "a/b", size=60)
    with pytest.raises(ValueError, match="n_scenes"):
        make_catalog(tmp_path, n_scenes=0)


def test_files_are_valid_cogs(scene: tuple[pystac.Item, Path]) -> None:
    item, d = scene
    names = sorted(p.name for p in d.iterdir())
    expected = sorted([*BAND_FILES.values(), "SCL.tif", "truth.tif", f"{item.id}.json"])
    assert names == expected
    for tif in d.glob("*.tif"):
        valid, errors, _ = cog_validate(str(tif), quiet=True)
        assert valid and not errors, (tif.name, errors)
        with rasterio.open(tif) as src:
            assert src.profile["tiled"] and src.compression is not None
            if src.width > 256:
                assert src.overviews(1), f"{tif.name} has no overviews"


def test_dtypes_nodata_and_offset(scene: tuple[pystac.Item, Path]) -> None:
    _, d = scene
    for name in BAND_FILES.values():
        with rasterio.open(d / name) as src:
            assert src.dtypes[0] == "uint16" and src.nodata == 0
    with rasterio.open(d / "SCL.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == 0
    with rasterio.open(d / "truth.tif") as src:
        assert src.dtypes[0] == "uint8" and src.nodata == TRUTH_NODATA
    truth = _read(d / "truth.tif")
    assert set(np.unique(truth)) <= {0, 1, 2, TRUTH_NODATA}
    scl = _read(d / "SCL.tif")
    land20 = np.isin(scl, (4, 5))  # vegetation, bare soil (no cloud, no shadow)
    land10 = np.repeat(np.repeat(land20, 2, 0), 2, 1) & (truth == 0)
    assert land20.mean() > 0.2
    for key in ("red", "nir", "swir16", "rededge1"):
        dn = _read(d / BAND_FILES[key])
        land = land10 if dn.shape[0] == SIZE else land20
        assert dn[land].min() >= 1000, key  # BOA_ADD_OFFSET: reflectance >= 0 -> DN >= 1000
    red = _read(d / "B04.tif").astype(float) * 1e-4 - 0.1
    assert 0.0 < np.median(red[truth == 0]) < 0.25  # plausible clear-sky surface reflectance


def test_grids_share_the_tile_corner(scene: tuple[pystac.Item, Path]) -> None:
    item, d = scene
    for band in BANDS:
        with rasterio.open(d / BAND_FILES[band.key]) as src:
            res = band.resolution
            assert src.crs.to_epsg() == 32631
            assert (src.transform.c, src.transform.f) == ORIGIN
            assert (src.transform.a, src.transform.e) == (res, -res)
            assert src.shape == (SIZE * 10 // res,) * 2
            assert list(src.shape) == item.assets[band.key].extra_fields["proj:shape"]
            assert list(src.transform)[:6] == item.assets[band.key].extra_fields["proj:transform"]


def test_same_seed_same_pixels(scene: tuple[pystac.Item, Path], tmp_path: Path) -> None:
    item, d = scene
    again = make_scene(tmp_path, item.id, size=SIZE, seed=3, nodata_wedge=0.35, cloud_cover=0.3)
    for name in [*BAND_FILES.values(), "SCL.tif", "truth.tif"]:
        np.testing.assert_array_equal(_read(d / name), _read(tmp_path / item.id / name), err_msg=name)
    assert again.properties["eo:cloud_cover"] == item.properties["eo:cloud_cover"]
    make_scene(tmp_path / "other", item.id, size=SIZE, seed=4, nodata_wedge=0.35)
    assert not np.array_equal(_read(d / "B04.tif"), _read(tmp_path / "other" / item.id / "B04.tif"))


def test_nodata_wedge_matches_truth(scene: tuple[pystac.Item, Path], catalog: Path) -> None:
    item, d = scene
    truth = _read(d / "truth.tif")
    nodata10 = truth == TRUTH_NODATA
    assert abs(nodata10.mean() - 0.35) < 0.01
    assert nodata10[:, 0].mean() > 0.9 and not nodata10[:, -1].any()  # a wedge at the left edge
    for name in ("B02.tif", "B03.tif", "B04.tif", "B08.tif"):
        np.testing.assert_array_equal(_read(d / name) == 0, nodata10, err_msg=name)
    scl0 = _read(d / "SCL.tif") == 0
    for band in BANDS:
        dn = _read(d / BAND_FILES[band.key])
        if band.resolution == 20:
            np.testing.assert_array_equal(dn == 0, scl0, err_msg=band.name)
        elif band.resolution == 60:
            assert abs((dn == 0).mean() - 0.35) < 0.03
    assert item.properties["s2:nodata_pixel_percentage"] == pytest.approx(100 * nodata10.mean(), abs=1e-4)
    # a scene without wedge has no nodata at all
    cat = pystac.Catalog.from_file(str(catalog))
    clear_items = [i for i in cat.get_items(recursive=True) if i.properties["s2:nodata_pixel_percentage"] == 0]
    assert clear_items
    href = clear_items[0].assets["truth"].get_absolute_href()
    assert href is not None and not (_read(Path(href)) == TRUTH_NODATA).any()


def test_clouds_and_shadows(scene: tuple[pystac.Item, Path]) -> None:
    item, d = scene
    truth = _read(d / "truth.tif")
    valid = truth != TRUTH_NODATA
    cloud, shadow, clear = truth == 1, truth == 2, truth == 0
    pct = 100.0 * cloud.sum() / valid.sum()
    assert item.properties["eo:cloud_cover"] == pytest.approx(pct, abs=1e-3)
    assert 15 < pct < 45  # asked for ~30 %
    assert shadow.sum() > 0.01 * valid.sum()
    blue = _read(d / "B02.tif").astype(float)
    nir = _read(d / "B08.tif").astype(float)
    assert blue[cloud].mean() > blue[clear].mean() + 1500
    assert nir[shadow].mean() < 0.7 * nir[clear].mean()
    # shadows fall away from the sun (azimuth 150 deg -> towards north-west, i.e. up and left)
    dist = 1000.0 / math.tan(math.radians(item.properties["view:sun_elevation"])) / 10.0
    az = math.radians(item.properties["view:sun_azimuth"])
    dr, dc = round(math.cos(az) * dist), round(-math.sin(az) * dist)

    def overlap(r: int, c: int) -> float:
        moved = np.roll(np.roll(cloud, r, 0), c, 1)
        return float((moved & shadow).sum())

    assert overlap(dr, dc) > 3 * overlap(-dr, -dc)


def test_cloud_cover_tracks_the_request(tmp_path: Path) -> None:
    covers = []
    for cc in (0.0, 0.1, 0.6):
        it = make_scene(tmp_path, f"cc{cc}", size=300, seed=7, cloud_cover=cc)
        covers.append(it.properties["eo:cloud_cover"])
    assert covers[0] == 0.0
    assert abs(covers[1] - 10) < 6 and abs(covers[2] - 60) < 12


@pytest.mark.shared
def test_item_matches_earth_search_c1(scene: tuple[pystac.Item, Path]) -> None:
    item_path = sorted(shared_dir(ES_ITEMS).glob("*.json"))[0]
    real = json.loads(item_path.read_text())
    item, d = scene
    loaded = pystac.Item.from_file(str(d / f"{item.id}.json"))  # loads (pystac migrates on read)
    assert loaded.id == item.id and set(loaded.assets) == set(item.assets)
    ours = json.loads((d / f"{item.id}.json").read_text())  # the layout as written, like `real`
    assert ours["stac_extensions"] == real["stac_extensions"]
    skip_props = {"created", "updated", "earthsearch:payload_id", "storage:platform", "storage:region",
                  "storage:requester_pays"}
    missing = set(real["properties"]) - set(ours["properties"]) - skip_props
    assert not missing, f"properties missing: {missing}"
    for key, value in real["properties"].items():
        if key not in skip_props and key not in ("processing:software",):
            assert type(ours["properties"][key]) is type(value) or isinstance(value, int | float), key
    assert ours["properties"]["cloudmask:synthetic"] is True
    assert ours["properties"]["s2:processing_baseline"] == "05.11"
    assert ours["properties"]["s2:product_type"] == "S2MSI2A"
    assert ours["properties"]["grid:code"] == "MGRS-31TDH"
    real_size = real["assets"]["red"]["proj:shape"][0]
    for band in BANDS:
        ra, oa = real["assets"][band.key], ours["assets"][band.key]
        assert set(ra) == set(oa), band.key
        for field in ("type", "title", "eo:bands", "gsd", "roles"):
            assert oa[field] == ra[field], (band.key, field)
        assert oa["raster:bands"] == ra["raster:bands"], band.key
        assert ra["proj:shape"][0] * ra["proj:transform"][0] == real_size * 10
        assert oa["proj:shape"][0] * oa["proj:transform"][0] == SIZE * 10
        assert oa["proj:transform"][:2] == ra["proj:transform"][:2]
        assert not oa["href"].startswith("/") and oa["href"].endswith(BAND_FILES[band.key])
    scl_r, scl_o = real["assets"]["scl"], ours["assets"]["scl"]
    assert {k: scl_o[k] for k in ("type", "title", "roles", "raster:bands")} == {
        k: scl_r[k] for k in ("type", "title", "roles", "raster:bands")}
    assert ours["assets"]["truth"]["roles"] == ["truth"]
    # geometry / bbox in WGS84, around the tile
    lon0, lat0, lon1, lat1 = ours["bbox"]
    assert -180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90
    c = ours["properties"]["proj:centroid"]
    assert lon0 < c["lon"] < lon1 and lat0 < c["lat"] < lat1


def test_catalog_layout_extents_and_relocation(catalog: Path, tmp_path: Path) -> None:
    assert catalog.name == "catalog.json"
    cat = pystac.Catalog.from_file(str(catalog))
    assert cat.extra_fields["cloudmask:sample"]["n_scenes"] == 3
    (collection,) = list(cat.get_children())
    assert isinstance(collection, pystac.Collection) and collection.id == "sentinel-2-c1-l2a"
    items = list(collection.get_items())
    assert len(items) == 3
    # pystac migrates projection v1.1 -> v2 on read (as for real Earth Search items): proj:epsg -> proj:code
    assert {i.properties["proj:code"] for i in items} == {"EPSG:32631"}
    assert len({tuple(i.assets["red"].extra_fields["proj:transform"]) for i in items}) == 1
    times = sorted(i.datetime for i in items if i.datetime)
    assert len(set(times)) == 3 and (times[-1] - times[0]).days >= 5
    assert collection.extent.temporal.intervals[0] == [times[0], times[-1]]
    bbox = collection.extent.spatial.bboxes[0]
    for it in items:
        assert it.bbox is not None
        assert bbox[0] <= it.bbox[0] and bbox[1] <= it.bbox[1] and bbox[2] >= it.bbox[2] and bbox[3] >= it.bbox[3]
        assert it.properties["cloudmask:synthetic"] is True
    assert len({i.properties["eo:cloud_cover"] for i in items}) == 3
    assert sum(i.properties["s2:nodata_pixel_percentage"] > 0 for i in items) == 1
    # every href in the catalogue is relative: the whole tree can be moved
    for path in catalog.parent.rglob("*.json"):
        text = path.read_text()
        assert str(catalog.parent) not in text, path
    moved = tmp_path / "moved"
    shutil.copytree(catalog.parent, moved)
    cat2 = pystac.Catalog.from_file(str(moved / "catalog.json"))
    it = next(iter(cat2.get_items(recursive=True)))
    href = it.assets["nir"].get_absolute_href()
    assert href is not None and href.startswith(str(moved))
    assert _read(Path(href)).shape == (SIZE, SIZE)


def test_catalog_is_idempotent(tmp_path: Path) -> None:
    path = make_catalog(tmp_path, n_scenes=2, size=120, seed=5)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert make_catalog(tmp_path, n_scenes=2, size=120, seed=5) == path
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps
    make_catalog(tmp_path, n_scenes=1, size=120, seed=6)  # other parameters: rebuilt
    cat = pystac.Catalog.from_file(str(path))
    assert len(list(cat.get_items(recursive=True))) == 1
    assert cat.extra_fields["cloudmask:sample"]["seed"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".building")]


def test_default_catalog_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUDMASK_SAMPLE_DIR", str(tmp_path / "s"))
    assert default_catalog_dir() == tmp_path / "s"
    monkeypatch.delenv("CLOUDMASK_SAMPLE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert default_catalog_dir() == tmp_path / "c" / "cloudmask" / "sample"
