"""Provider profiles pinned against real STAC items of ../shared/data/stac (cloudmask.profiles).

The expected tables below are written out by hand from the providers' documentation and the items'
SOURCE.md notes: they are not computed with the code under test.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pystac
import pytest
from click.testing import CliRunner

from cloudmask.cli import main
from cloudmask.errors import ItemLayoutError, MissingBandError, UnknownProfileError
from cloudmask.profiles import get_profile, list_profiles, processing_baseline, scene_spec
from cloudmask.reader import RasterSource, ReaderConfig
from cloudmask.stac.sign import sign_item

try:
    from .conftest import shared_dir
except ImportError:  # tests/ not a package
    from conftest import shared_dir  # type: ignore[no-redef]

pytestmark = pytest.mark.shared

S = 0.0001  # Sentinel-2 DN scale
NATIVE_RES = {
    "coastal": 60.0, "blue": 10.0, "green": 10.0, "red": 10.0, "rededge1": 20.0, "rededge2": 20.0,
    "rededge3": 20.0, "nir": 10.0, "nir08": 20.0, "nir09": 60.0, "cirrus": 60.0, "swir16": 20.0,
    "swir22": 20.0, "scl": 20.0,
}
S2_FILE = {  # Sentinel-2 band file token of each common name
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12", "scl": "SCL",
}
L2A_BANDS = [b for b in NATIVE_RES if b != "cirrus"]  # 12 reflectance bands + scl
L1C_BANDS = [b for b in NATIVE_RES if b != "scl"]  # 13 reflectance bands incl. cirrus


def _tile(item_id: str) -> tuple[str, str, str]:
    m = re.search(r"_T?(\d{2})([C-X])([A-Z]{2})_", item_id)
    assert m, item_id
    return m.group(1), m.group(2), m.group(3)


def _es_c1_href(item: dict[str, Any], band: str) -> str:
    z, lat, sq = _tile(item["id"])
    return (f"https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/sentinel-2-c1-l2a/"
            f"{int(z)}/{lat}/{sq}/{item['properties']['datetime'][:4]}/"
            f"{int(item['properties']['datetime'][5:7])}/{item['id']}/{S2_FILE[band]}.tif")


def _es_l2a_href(item: dict[str, Any], band: str) -> str:
    z, lat, sq = _tile(item["id"])
    dt = item["properties"]["datetime"]
    return (f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/"
            f"{int(z)}/{lat}/{sq}/{dt[:4]}/{int(dt[5:7])}/{item['id']}/{S2_FILE[band]}.tif")


def _es_l1c_href(item: dict[str, Any], band: str) -> str:
    z, lat, sq = _tile(item["id"])
    dt = item["properties"]["datetime"]
    return (f"s3://sentinel-s2-l1c/tiles/{int(z)}/{lat}/{sq}/{dt[:4]}/{int(dt[5:7])}/{int(dt[8:10])}/0/"
            f"{S2_FILE[band]}.jp2")


def _es_v0_href(item: dict[str, Any], band: str) -> str:
    return f"https://sentinel-cogs.s3.us-west-2.amazonaws.com/sentinel-s2-l2a-cogs/2020/{item['id']}/{S2_FILE[band]}.tif"


def _pc_href(item: dict[str, Any], band: str) -> tuple[str, str]:
    """PC hrefs are long SAFE paths: pin prefix and file name."""
    z, lat, sq = _tile(item["id"])
    dt = item["properties"]["datetime"]
    prefix = f"https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/{z}/{lat}/{sq}/{dt[:4]}/{dt[5:7]}/{dt[8:10]}/"
    suffix = f"_{S2_FILE[band]}_{int(NATIVE_RES[band])}m.tif"
    return prefix, suffix


def _stactools_href(item: dict[str, Any], band: str) -> tuple[str, str]:
    if "MSIL1C" in item["properties"]["s2:product_uri"]:
        return "./GRANULE/L1C_", rf"_{S2_FILE[band]}\.jp2$"
    return "./GRANULE/L2A_", rf"_{S2_FILE[band]}_{int(NATIVE_RES[band])}m\.(jp2|tif)$"


CDSE_BASE = (
    "s3://eodata/Sentinel-2/MSI/L2A/2025/03/30/S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914.SAFE/"
    "GRANULE/L2A_T33UWP_A002952_20250330T100435/IMG_DATA/"
)

# folder -> (profile, product level, band -> (scale, offset, nodata), href rule, number of items)
EXPECTED: dict[str, tuple[str, str, dict[str, tuple[float, float, float]], Any, int]] = {
    "earth-search/pystac-client_cassettes/sentinel-2-c1-l2a": (
        "earth-search-c1-l2a", "l2a",
        {b: ((1.0, 0.0, 0) if b == "scl" else (S, -0.1, 0)) for b in L2A_BANDS},
        _es_c1_href, 6,
    ),
    "earth-search/pystac-client_cassettes/sentinel-2-l2a": (
        # earthsearch:boa_offset_applied is true on all of them -> -0.1
        "earth-search-l2a", "l2a",
        {b: ((1.0, 0.0, 0) if b == "scl" else (S, -0.1, 0)) for b in L2A_BANDS},
        _es_l2a_href, 7,
    ),
    "earth-search/pystac-client_cassettes/sentinel-2-l1c": (
        "earth-search-l1c", "l1c", {b: (S, -0.1, 0) for b in L1C_BANDS}, _es_l1c_href, 5,
    ),
    "earth-search/odc-stac_v0": (
        # baseline 02.14 (from sentinel:product_id) -> no offset
        "earth-search-v0", "l2a",
        {b: ((1.0, 0.0, 0) if b == "scl" else (S, 0.0, 0)) for b in L2A_BANDS},
        _es_v0_href, 1,
    ),
    "planetary-computer/pystac-client_cassettes/sentinel-2-l2a": (
        # baseline 02.12 -> no offset; PC has no raster:bands
        "planetary-computer", "l2a",
        {b: ((1.0, 0.0, 0) if b == "scl" else (S, 0.0, 0)) for b in L2A_BANDS},
        _pc_href, 10,
    ),
    "planetary-computer/odc-stac": (
        "planetary-computer", "l2a",
        {b: ((1.0, 0.0, 0) if b == "scl" else (S, 0.0, 0)) for b in L2A_BANDS},
        _pc_href, 2,
    ),
}

STACTOOLS = {  # item file stem prefix -> (product level, offset, bands)
    "S2A_MSIL1C_20210908T042701_N0301": ("l1c", 0.0, L1C_BANDS),
    "S2A_MSIL2A_20230625T234621_N0509": ("l2a", -0.1, L2A_BANDS),
    "S2B_MSIL2A_20220413T150759_N0400": ("l2a", -0.1, L2A_BANDS),
}

# one tile grid per provider, read off proj:transform/proj:shape by hand
BOUNDS = {
    "S2B_T24MUV_20250731T130245_L2A": ("EPSG:32724", (300000.0, 9390220.0, 409800.0, 9500020.0)),
    "S2B_24MVV_20250731_0_L2A": ("EPSG:32724", (399960.0, 9390220.0, 509760.0, 9500020.0)),
    "S2B_20EPT_20250731_0_L1C": ("EPSG:32720", (600000.0, 3190240.0, 709800.0, 3300040.0)),
    "S2A_28QCH_20200714_0_L2A": ("EPSG:32628", (300000.0, 2190240.0, 409800.0, 2300040.0)),
    "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531": ("EPSG:32606", (399960.0, 6690240.0, 509760.0, 6800040.0)),
    "S2C_MSIL2A_20250330T100051_N0511_R122_T33UWP_20250330T145914": ("EPSG:32633", (499980.0, 5290200.0, 609780.0, 5400000.0)),
    "S2B_T33XWJ_20220413T150756_L2A": ("EPSG:32633", (499980.0, 8790240.0, 609780.0, 8900040.0)),
}


def _stac_dir() -> Path:
    return shared_dir("data", "stac")


def _items(folder: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((_stac_dir() / folder).glob("*.json"))
    out = [(f.name, json.loads(f.read_text())) for f in files]
    return [(n, d) for n, d in out if d.get("type") == "Feature"]


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_real_items_map_to_pinned_bands(folder: str) -> None:
    profile, level, table, href_rule, n_items = EXPECTED[folder]
    items = _items(folder)
    assert len(items) == n_items
    for name, d in items:
        spec = scene_spec(d)
        assert spec.profile == profile, name
        assert spec.product_level == level, name
        assert sorted(spec.bands) == sorted(table), name
        for band, (scale, offset, nodata) in table.items():
            ba = spec.bands[band]
            assert ba.band == band
            assert (ba.scale, ba.offset, ba.nodata) == pytest.approx((scale, offset, nodata)), (name, band)
            assert ba.resolution == NATIVE_RES[band], (name, band)
            want = href_rule(d, band)
            if isinstance(want, tuple):
                assert ba.href.startswith(want[0]) and ba.href.endswith(want[1]), (name, band, ba.href)
            else:
                assert ba.href == want, (name, band)
        assert spec.id == d["id"]
        assert spec.collection == d["collection"]
        assert spec.datetime is not None and spec.datetime.isoformat()[:19] == d["properties"]["datetime"][:19]


@pytest.mark.parametrize("stem", sorted(STACTOOLS))
def test_stactools_items(stem: str) -> None:
    level, offset, bands = STACTOOLS[stem]
    [(name, d)] = [(n, d) for n, d in _items("stactools-sentinel2") if n.startswith(stem)]
    spec = scene_spec(d)
    assert spec.profile == "stactools-sentinel2"
    assert spec.product_level == level
    assert sorted(spec.bands) == sorted(bands)
    for band in bands:
        ba = spec.bands[band]
        want_scale, want_offset = (1.0, 0.0) if band == "scl" else (S, offset)
        assert (ba.scale, ba.offset, ba.nodata) == pytest.approx((want_scale, want_offset, 0)), band
        assert ba.resolution == NATIVE_RES[band]
        prefix, pattern = _stactools_href(d, band)
        assert ba.href.startswith(prefix) and re.search(pattern, ba.href), (band, ba.href)


def test_cdse_excerpt() -> None:
    [(_, d)] = _items("cdse")
    spec = scene_spec(d)
    assert spec.profile == "cdse"
    assert spec.product_level == "l2a"
    # the excerpt keeps B02_10m, B08_10m and SCL_20m of the ~60 assets
    assert sorted(spec.bands) == ["blue", "nir", "scl"]
    assert spec.bands["blue"].href == CDSE_BASE + "R10m/T33UWP_20250330T100051_B02_10m.jp2"
    assert spec.bands["nir"].href == CDSE_BASE + "R10m/T33UWP_20250330T100051_B08_10m.jp2"
    assert spec.bands["scl"].href == CDSE_BASE + "R20m/T33UWP_20250330T100051_SCL_20m.jp2"
    for band in ("blue", "nir"):
        b = spec.bands[band]
        assert (b.scale, b.offset, b.nodata, b.resolution) == pytest.approx((S, -0.1, 0, 10.0))
    assert (spec.bands["scl"].scale, spec.bands["scl"].offset, spec.bands["scl"].resolution) == (1.0, 0.0, 20.0)
    env = spec.gdal_env
    assert "cloudmask:gdal_env" not in spec.properties
    assert env["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    assert env["AWS_VIRTUAL_HOSTING"] == "FALSE"
    assert processing_baseline(pystac.Item.from_dict(d, migrate=False)) == "05.11"
    with pytest.raises(MissingBandError, match="red"):
        spec.assets_for(("red", "green", "blue", "nir"))


def test_cdse_full_keys_from_processing_version() -> None:
    """CDSE with every band: the <BAND>_<res> keys at native resolution; offset from raster:offset."""
    [(_, d)] = _items("cdse")
    d = copy.deepcopy(d)
    template = d["assets"]["B02_10m"]
    for band, token in S2_FILE.items():
        if band in ("cirrus", "scl", "blue"):
            continue
        res = int(NATIVE_RES[band])
        a = copy.deepcopy(template)
        a["href"] = template["href"].replace("R10m", f"R{res}m").replace("_B02_10m", f"_{token}_{res}m")
        d["assets"][f"{token}_{res}m"] = a
        if res != 60:  # a resampled duplicate must not win over the native asset
            d["assets"][f"{token}_60m"] = dict(a, href="s3://eodata/wrong.jp2")
    spec = scene_spec(d)
    assert sorted(spec.bands) == sorted(L2A_BANDS)
    assert spec.bands["swir16"].href.endswith("R20m/T33UWP_20250330T100051_B11_20m.jp2")
    assert spec.bands["coastal"].href.endswith("_B01_60m.jp2")
    # no raster:offset -> baseline from processing:version 05.11
    for a in d["assets"].values():
        a.pop("raster:offset", None)
        a.pop("raster:scale", None)
    assert scene_spec(d).bands["red"].offset == pytest.approx(-0.1)
    d["properties"]["processing:version"] = "03.01"
    assert scene_spec(d).bands["red"].offset == 0.0


def test_bounds_and_crs() -> None:
    seen = set()
    for path in sorted(_stac_dir().rglob("*.json")):
        d = json.loads(path.read_text())
        if d.get("type") != "Feature" or d["id"] not in BOUNDS:
            continue
        spec = scene_spec(d)
        crs, bounds = BOUNDS[d["id"]]
        assert spec.crs == crs
        assert spec.bounds == pytest.approx(bounds)
        assert spec.geobox(10.0).shape == (10980, 10980)
        assert spec.geobox(60.0).shape == (1830, 1830)
        seen.add(d["id"])
    assert seen == set(BOUNDS)


def test_earth_search_l2a_boa_flag_decides_offset() -> None:
    [(_, d)] = [(n, d) for n, d in _items("earth-search/pystac-client_cassettes/sentinel-2-l2a")
                if n.startswith("S2B_24MUV")]
    d = copy.deepcopy(d)
    d["properties"]["earthsearch:boa_offset_applied"] = False  # raster:bands still says -0.1
    spec = scene_spec(d)
    assert spec.bands["red"].offset == 0.0
    assert spec.bands["red"].scale == S
    del d["properties"]["earthsearch:boa_offset_applied"]  # no flag: raster:bands
    assert scene_spec(d).bands["red"].offset == pytest.approx(-0.1)


def test_planetary_computer_baseline_offset() -> None:
    [(_, d)] = [(n, d) for n, d in _items("planetary-computer/odc-stac") if not n.endswith("raster_ext.json")]
    d = copy.deepcopy(d)
    d["properties"]["s2:processing_baseline"] = "04.00"
    assert scene_spec(d).bands["red"].offset == pytest.approx(-0.1)
    d["properties"]["s2:processing_baseline"] = "05.10"
    assert scene_spec(d).bands["nir"].offset == pytest.approx(-0.1)
    d["properties"]["s2:processing_baseline"] = "03.01"
    assert scene_spec(d).bands["red"].offset == 0.0


def test_planetary_computer_signing(monkeypatch: pytest.MonkeyPatch) -> None:
    [(_, d)] = [(n, d) for n, d in _items("planetary-computer/odc-stac") if not n.endswith("raster_ext.json")]
    fake = types.ModuleType("planetary_computer")
    fake.sign = lambda href: href + "?sig=test"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "planetary_computer", fake)
    spec = scene_spec(d)
    assert spec.bands["red"].href.endswith("_B04_10m.tif?sig=test")
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # not installed: unsigned
    assert scene_spec(d).bands["red"].href.endswith("_B04_10m.tif")
    monkeypatch.setitem(sys.modules, "planetary_computer", fake)
    item = pystac.Item.from_dict(copy.deepcopy(d), migrate=False)
    signed = sign_item(item)
    assert signed.assets["B04"].href.endswith("_B04_10m.tif?sig=test")
    assert item.assets["B04"].href.endswith("_B04_10m.tif")  # the search result itself stays unsigned


def test_earth_search_l1c_needs_requester_pays() -> None:
    [(_, d), *_rest] = _items("earth-search/pystac-client_cassettes/sentinel-2-l1c")
    assert scene_spec(d).gdal_env["AWS_REQUEST_PAYER"] == "requester"


def test_profile_override_and_aliases() -> None:
    [(_, d), *_rest] = _items("earth-search/pystac-client_cassettes/sentinel-2-c1-l2a")
    assert scene_spec(d, profile="earth-search").profile == "earth-search-c1-l2a"
    assert scene_spec(d, profile="stactools-sentinel2").profile == "stactools-sentinel2"
    with pytest.raises(ItemLayoutError, match="B02") as err:
        scene_spec(d, profile="planetary-computer")
    assert "has none of the band assets" in str(err.value)
    with pytest.raises(UnknownProfileError, match="unknown profile 'nope'"):
        scene_spec(d, profile="nope")


def test_unknown_layout_names_missing_assets() -> None:
    [(_, d), *_rest] = _items("earth-search/pystac-client_cassettes/sentinel-2-c1-l2a")
    d = copy.deepcopy(d)
    d["collection"] = "something-else"
    d["assets"] = {"foo": d["assets"]["red"], "bar": d["assets"]["nir"]}
    with pytest.raises(ItemLayoutError) as err:
        scene_spec(d)
    msg = str(err.value)
    assert "matches no known Sentinel-2 layout" in msg
    assert "B04_10m" in msg and "red" in msg and "bar, foo" in msg


def test_missing_grid_is_a_layout_error() -> None:
    [(_, d), *_rest] = _items("earth-search/pystac-client_cassettes/sentinel-2-c1-l2a")
    d = copy.deepcopy(d)
    for a in d["assets"].values():
        a.pop("proj:transform", None)
        a.pop("proj:shape", None)
    with pytest.raises(ItemLayoutError, match="proj:transform"):
        scene_spec(d)


def test_list_profiles() -> None:
    names = [p.name for p in list_profiles()]
    assert names[0] == "earth-search-c1-l2a"
    assert set(names) >= {
        "earth-search-c1-l2a", "earth-search-l2a", "earth-search-l1c", "earth-search-v0",
        "planetary-computer", "cdse", "stactools-sentinel2",
    }
    assert get_profile("pc").name == "planetary-computer"


def test_profiles_command_lists_what_each_maps() -> None:
    res = CliRunner().invoke(main, ["profiles"])
    assert res.exit_code == 0, res.output
    for p in list_profiles():
        assert p.name in res.output
    assert "B04 / B08" in res.output  # planetary-computer's red / nir asset keys
    one = CliRunner().invoke(main, ["profiles", "pc"])
    assert one.exit_code == 0 and one.output.startswith("planetary-computer:")
    assert "hrefs signed: planetary-computer" in one.output
    assert any(line.split()[:2] == ["swir16", "B11"] for line in one.output.splitlines())
    doc = json.loads(CliRunner().invoke(main, ["profiles", "--json"]).output)
    assert {d["name"] for d in doc} == {p.name for p in list_profiles()}
    assert next(d for d in doc if d["name"] == "cdse")["assets"]["red"][0] == "B04_10m"


def test_unknown_profile_points_to_the_command() -> None:
    res = CliRunner().invoke(main, ["profiles", "nope"])
    assert res.exit_code == 2  # an argument error, like any other unknown option value
    assert "unknown profile 'nope'" in res.output and "`cloudmask profiles`" in res.output


def test_reader_takes_the_gdal_settings_from_the_scene() -> None:
    [(_, d), *_rest] = _items("earth-search/pystac-client_cassettes/sentinel-2-l1c")
    spec = scene_spec(d)
    src = RasterSource(spec, ("blue",), spec.geobox(60), ReaderConfig(gdal_env={"AWS_REGION": "us-west-2"}))
    try:  # the profile's settings win over the reader's defaults; nothing is opened yet
        assert src._handles.env == {"AWS_REQUEST_PAYER": "requester", "AWS_REGION": "eu-central-1"}
    finally:
        src.close()
