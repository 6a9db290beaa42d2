"""Static-catalogue search (cloudmask.stac.search) over real items, AOIs, dedupe and errors; the one
search query parser (cloudmask.stac.query) that the CLI, job specs, the API and Metis share."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import pytest
from shapely.geometry import box, mapping, shape

from cloudmask.errors import CatalogError, CatalogNotFoundError, ConfigError
from cloudmask.profiles import scene_spec
from cloudmask.stac import ENDPOINTS, SearchQuery, dedupe, parse_aoi, parse_bbox, parse_datetime, search

try:
    from .conftest import shared_dir
except ImportError:  # tests/ not a package
    from conftest import shared_dir  # type: ignore[no-redef]

ES = "earth-search/pystac-client_cassettes"
# north-east Brazil, tiles 24MUV/24MVV/24MWV/24MXV/24MUA, 2025-07-31
BRAZIL = (-41.0, -6.0, -38.0, -4.0)


def _real(folder: str) -> list[dict[str, Any]]:
    out = []
    for f in sorted(shared_dir("data", "stac", folder).glob("*.json")):
        d = json.loads(f.read_text())
        if d.get("type") == "Feature":
            out.append(d)
    return out


def _build_catalog(root: Path, items: list[dict[str, Any]]) -> Path:
    """A self-contained static catalogue: one sub-collection per collection id, like Earth Search."""
    cat = pystac.Catalog("test", "cloudmask test catalogue")
    by_coll: dict[str, list[pystac.Item]] = {}
    for d in items:
        item = pystac.Item.from_dict(copy.deepcopy(d), migrate=False)
        item.clear_links()
        by_coll.setdefault(d.get("collection") or "none", []).append(item)
    for coll_id, coll_items in by_coll.items():
        coll = pystac.Collection(
            coll_id, f"{coll_id} test", pystac.Extent(
                pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]), pystac.TemporalExtent([[datetime(2015, 6, 23, tzinfo=UTC), None]])
            ),
        )
        for item in coll_items:
            coll.add_item(item)
        cat.add_child(coll)
    cat.normalize_hrefs(str(root))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


@pytest.fixture(scope="module")
def es_items() -> list[dict[str, Any]]:
    return _real(f"{ES}/sentinel-2-c1-l2a") + _real(f"{ES}/sentinel-2-l2a") + _real(f"{ES}/sentinel-2-l1c")


@pytest.fixture(scope="module")
def es_catalog(tmp_path_factory: pytest.TempPathFactory, es_items: list[dict[str, Any]]) -> Path:
    return _build_catalog(tmp_path_factory.mktemp("es-static"), es_items)


def _hand_filter(
    items: list[dict[str, Any]], *, geom: Any = None, start: str | None = None, end: str | None = None,
    max_cloud: float | None = None, collection: str | None = None,
) -> set[str]:
    keep = set()
    for d in items:
        p = d["properties"]
        if collection and d.get("collection") != collection:
            continue
        if max_cloud is not None and p["eo:cloud_cover"] > max_cloud:
            continue
        if start and p["datetime"] < start:
            continue
        if end and p["datetime"] > end:
            continue
        if geom is not None and not shape(d["geometry"]).intersects(geom):
            continue
        keep.add(d["id"])
    return keep


@pytest.mark.shared
@pytest.mark.parametrize("max_cloud", [None, 20, 30, 40])
def test_static_bbox_datetime_cloud(es_catalog: Path, es_items: list[dict[str, Any]], max_cloud: float | None) -> None:
    found = search(es_catalog, bbox=BRAZIL, datetime="2025-07-31", max_cloud=max_cloud)
    want = _hand_filter(es_items, geom=box(*BRAZIL), start="2025-07-31T00", end="2025-07-31T23:59:59.9Z",
                        max_cloud=max_cloud)
    assert {i.id for i in found} == want
    assert len(found) == len(want)  # no duplicates
    # the folder, catalog.json and the string path all work
    assert {i.id for i in search(str(es_catalog.parent), bbox=BRAZIL, datetime="2025-07-31",
                                 max_cloud=max_cloud)} == want


@pytest.mark.shared
def test_static_collection_min_cloud_limit_sortby(es_catalog: Path, es_items: list[dict[str, Any]]) -> None:
    found = search(es_catalog, collection="sentinel-2-c1-l2a", min_cloud=25, sortby="-eo:cloud_cover")
    ccs = [i.properties["eo:cloud_cover"] for i in found]
    assert ccs == sorted(ccs, reverse=True)
    assert {i.id for i in found} == {
        d["id"] for d in es_items
        if d["collection"] == "sentinel-2-c1-l2a" and d["properties"]["eo:cloud_cover"] >= 25
    }
    assert all(i.collection_id == "sentinel-2-c1-l2a" for i in found)
    top2 = search(es_catalog, collection="sentinel-2-c1-l2a", min_cloud=25, sortby="-eo:cloud_cover", limit=2)
    assert [i.id for i in top2] == [i.id for i in found[:2]]
    with pytest.raises(ConfigError, match="limit must be"):
        search(es_catalog, limit=0)
    two = search(es_catalog, collection=["sentinel-2-l1c", "sentinel-2-l2a"])
    assert {i.collection_id for i in two} == {"sentinel-2-l1c", "sentinel-2-l2a"}


@pytest.mark.shared
def test_static_datetime_outside(es_catalog: Path) -> None:
    assert search(es_catalog, datetime="2024-01-01/2024-12-31") == []
    assert {i.id for i in search(es_catalog, datetime="2023-10")} == {"S2A_13TDE_20231008_0_L2A"}
    assert len(search(es_catalog, datetime="../2023-12-31")) == 1
    assert len(search(es_catalog, datetime=(datetime(2025, 7, 31, tzinfo=UTC), None))) == 17


@pytest.mark.shared
def test_aoi_forms(es_catalog: Path, es_items: list[dict[str, Any]], tmp_path: Path) -> None:
    # a small polygon inside tile 24MWV only (lon -38.4, lat -4.8)
    poly = box(-38.45, -4.85, -38.40, -4.80)
    want = _hand_filter(es_items, geom=poly)
    assert want and all("24MWV" in i for i in want)
    gj_file = tmp_path / "aoi.geojson"
    gj_file.write_text(json.dumps({"type": "FeatureCollection",
                                   "features": [{"type": "Feature", "properties": {}, "geometry": mapping(poly)}]}))
    for aoi in (str(gj_file), gj_file, mapping(poly), {"type": "Feature", "properties": {}, "geometry": mapping(poly)},
                poly.wkt, json.dumps(mapping(poly))):
        assert {i.id for i in search(es_catalog, aoi=aoi)} == want, aoi
    # AOI and bbox together: both must intersect
    assert search(es_catalog, aoi=poly.wkt, bbox=(-41.0, -6.0, -39.0, -4.0)) == []
    assert {i.id for i in search(es_catalog, aoi=poly.wkt, bbox=BRAZIL, max_cloud=20)} == _hand_filter(
        es_items, geom=poly, max_cloud=20)


def test_bad_aoi_and_filters() -> None:
    with pytest.raises(ConfigError, match="not a GeoJSON file"):
        parse_aoi("/no/such/aoi.geojson")
    with pytest.raises(ConfigError):
        parse_aoi({"type": "FeatureCollection", "features": []})
    with pytest.raises(ConfigError, match="bbox needs 4"):
        search("/tmp", bbox=(1.0, 2.0, 3.0))
    with pytest.raises(ConfigError, match="min_cloud"):
        search("/tmp", min_cloud=50, max_cloud=10)
    with pytest.raises(ConfigError, match="cannot read datetime"):
        parse_datetime("yesterday")


def test_parse_datetime() -> None:
    start, end = parse_datetime("2024-06")
    assert start == datetime(2024, 6, 1, tzinfo=UTC)
    assert end is not None and end.date().isoformat() == "2024-06-30" and end.hour == 23
    assert parse_datetime("../2024-01-02T10:00:00Z")[0] is None
    assert parse_datetime("2024-01-02T10:00:00/..")[0] == datetime(2024, 1, 2, 10, tzinfo=UTC)
    assert parse_datetime(None) == (None, None)


def test_nonexistent_path_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "catalog.json"
    with pytest.raises(CatalogNotFoundError, match=str(missing)):
        search(missing)
    with pytest.raises(CatalogNotFoundError, match="holds no catalog.json"):
        search(tmp_path)
    (tmp_path / "catalog.json").write_text("{not json")
    with pytest.raises(CatalogError, match="cannot read"):
        search(tmp_path)


def _reprocessed(d: dict[str, Any], new_id: str, baseline: str, generated: str) -> dict[str, Any]:
    r = copy.deepcopy(d)
    r["id"] = new_id
    r["properties"]["s2:processing_baseline"] = baseline
    r["properties"]["s2:generation_time"] = generated
    return r


@pytest.mark.shared
def test_dedupe_keeps_newest_processing(tmp_path: Path) -> None:
    pc = _real("planetary-computer/pystac-client_cassettes/sentinel-2-l2a")
    old = pc[0]  # S2A_..._T59VMF_20201007T214657, baseline 02.12
    new = _reprocessed(old, old["id"].rsplit("_", 1)[0] + "_20231201T000000", "05.00", "2023-12-01T00:00:00Z")
    newer_gen = _reprocessed(old, old["id"].rsplit("_", 1)[0] + "_20201008T000000", "02.12", "2020-10-08T00:00:00Z")
    cat = _build_catalog(tmp_path / "c", [old, new, newer_gen, *pc[1:]])
    found = search(cat)
    ids = {i.id for i in found}
    assert new["id"] in ids
    assert old["id"] not in ids and newer_gen["id"] not in ids
    assert len(found) == len(pc)
    # without the baseline bump the later generation time wins; order of listing does not matter
    items = [pystac.Item.from_dict(copy.deepcopy(x), migrate=False) for x in (newer_gen, old)]
    assert [i.id for i in dedupe(items)] == [newer_gen["id"]]
    assert [i.id for i in dedupe(list(reversed(items)))] == [newer_gen["id"]]
    # limit counts scenes, not duplicates
    assert len(search(cat, limit=3)) == 3


@pytest.mark.shared
def test_item_collection_file() -> None:
    """A saved search result (GeoJSON FeatureCollection of PC items) is a static catalogue too."""
    path = shared_dir("data", "stac", "planetary-computer", "odc-stac", "site2-2020_jun_jul-35MNM.geojson")
    found = search(path, max_cloud=1.0, datetime="2020-06-01/2020-06-30")
    raw = json.loads(path.read_text())["features"]
    want = {f["id"] for f in raw if f["properties"]["eo:cloud_cover"] <= 1.0
            and "2020-06-01" <= f["properties"]["datetime"][:10] <= "2020-06-30"}
    assert {i.id for i in found} == want and want
    spec = scene_spec(found[0])
    assert spec.profile == "planetary-computer"


def test_endpoints_named() -> None:
    assert ENDPOINTS["earth-search"].collection == "sentinel-2-c1-l2a"
    assert ENDPOINTS["planetary-computer"].url.startswith("https://planetarycomputer.microsoft.com/")
    assert ENDPOINTS["cdse"].url == "https://stac.dataspace.copernicus.eu/v1"


def test_sample_catalogue_searches_and_maps(sample_catalog: Path) -> None:
    items = search(sample_catalog)
    assert len(items) == 3
    spec = scene_spec(items[0])
    assert spec.profile == "earth-search-c1-l2a"  # the sample writes Earth Search c1-l2a items
    assert {"red", "green", "blue", "nir"} <= set(spec.bands)
    assert Path(spec.bands["red"].href).is_file()
    assert spec.bands["red"].offset == pytest.approx(-0.1)
    low = search(sample_catalog, max_cloud=20)
    assert [i.id for i in low] == [i.id for i in items if i.properties["eo:cloud_cover"] <= 20] and low


PC = "planetary-computer/pystac-client_cassettes/sentinel-2-l2a"  # Kamchatka, 169-175 E


@pytest.mark.shared
def test_antimeridian_bbox(tmp_path: Path) -> None:
    """west > east is a box across the antimeridian, the same from a tuple or from CLI text."""
    pc = _real(PC)
    cat = _build_catalog(tmp_path / "c", pc)
    for bbox in ((172.7, 55.0, -170.0, 60.0), (179.0, 55.0, 171.1, 60.0)):
        w, s, e, n = bbox
        area = box(w, s, 180.0, n).union(box(-180.0, s, e, n))
        want = {d["id"] for d in pc if shape(d["geometry"]).intersects(area)}
        assert want and want != {d["id"] for d in pc}  # neither empty nor everything
        assert {i.id for i in search(cat, bbox=bbox)} == want
        assert {i.id for i in search(cat, bbox=",".join(map(str, bbox)))} == want


def test_one_query_parser() -> None:
    assert parse_bbox("5.9, 45.8,10.5,47.8") == parse_bbox([5.9, 45.8, 10.5, 47.8]) == (5.9, 45.8, 10.5, 47.8)
    assert parse_bbox("170,50,-170,60") == (170.0, 50.0, -170.0, 60.0)
    for bad, words in (("1,2,3", "needs 4 numbers"), ("1,5,2,4", "south"), ("1,2,1,3", "no width"),
                       ("190,0,191,1", "longitudes"), ("0,-95,1,1", "latitudes"), ("a,b,c,d", "needs 4"),
                       ("0,nan,1,1", "non-finite")):
        with pytest.raises(ConfigError, match=words):
            parse_bbox(bad)
    for kw, words in (({"max_cloud": 150}, "max_cloud"), ({"min_cloud": -1}, "min_cloud"),
                      ({"limit": 0}, "limit"), ({"limit": True}, "limit"),
                      ({"datetime": "2024-13"}, "cannot read datetime"), ({"aoi": "POLYGON((0 0"}, "WKT")):
        with pytest.raises(ConfigError, match=words):
            SearchQuery.build(**kw)  # type: ignore[arg-type]
    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    q = SearchQuery.build(datetime="last 10 days", now=now)
    assert (q.start, q.end) == (datetime(2024, 6, 10, 12, tzinfo=UTC), now)
    assert SearchQuery.build(datetime="P1W", now=now).start == datetime(2024, 6, 13, 12, tzinfo=UTC)
    q = SearchQuery.build(collection="a, b", bbox="170,50,-170,60", min_cloud=5, max_cloud=60,
                          sortby="-eo:cloud_cover,datetime")
    params = q.api_params()
    assert params["collections"] == ["a", "b"]
    assert "bbox" not in params and params["intersects"]["type"] == "MultiPolygon"
    assert params["filter"] == {"op": "and", "args": [
        {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 60.0]},
        {"op": ">=", "args": [{"property": "eo:cloud_cover"}, 5.0]}]}
    assert params["filter_lang"] == "cql2-json"
    assert params["sortby"] == [{"field": "properties.eo:cloud_cover", "direction": "desc"},
                                {"field": "properties.datetime", "direction": "asc"}]
    assert SearchQuery.build(bbox=(1, 2, 3, 4)).api_params()["bbox"] == [1.0, 2.0, 3.0, 4.0]
