"""search() against a real STAC API: stac-fastapi-pgstac over PostgreSQL + pgstac (tests/stac_api.py).

The server holds every real item of ../shared/data/stac; expected results are computed by hand
(shapely over the loaded item dicts), not with cloudmask's own filters.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from shapely.geometry import box, shape

from cloudmask.catalog import RetryPolicy, scene_spec, search
from cloudmask.errors import CatalogError, CatalogNotFoundError, CatalogUnreachableError

try:
    from .stac_api import closed_port, simple_collection
except ImportError:  # tests/ not a package
    from stac_api import closed_port, simple_collection  # type: ignore[no-redef]

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def _all(real: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for items in real.values() for d in items]


def _hand(
    items: list[dict[str, Any]], *, geom: Any = None, start: str | None = None, end: str | None = None,
    max_cloud: float | None = None, collections: tuple[str, ...] | None = None,
) -> set[tuple[str, str]]:
    keep = set()
    for d in items:
        p = d["properties"]
        if collections is not None and d["collection"] not in collections:
            continue
        if max_cloud is not None and not p.get("eo:cloud_cover", 101) <= max_cloud:
            continue
        if start is not None and p["datetime"] < start:
            continue
        if end is not None and p["datetime"] > end:
            continue
        if geom is not None and not shape(d["geometry"]).intersects(geom):
            continue
        keep.add((d["collection"], d["id"]))
    return keep


CASES = {
    # name: (bbox, datetime, expected-datetime-range for the hand filter, max_cloud)
    "world-all-time": ((-180.0, -90.0, 180.0, 90.0), None, (None, None), 20),
    "brazil-one-day": ((-41.0, -6.0, -38.0, -4.0), "2025-07-31", ("2025-07-31", "2025-07-31T23:59:59.999Z"), 20),
    "brazil-30": ((-41.0, -6.0, -38.0, -4.0), "2025-07-01/2025-08-31", ("2025-07-01", "2025-08-31T23:59:59.999Z"), 30),
    "north-2019-2023": ((-180.0, 50.0, 180.0, 85.0), "2019-01-01/2023-12-31", ("2019-01-01", "2023-12-31T23:59:59.999Z"), 20),
    "kamchatka-cloudy": ((170.0, 55.0, 180.0, 65.0), "2019-01-01", ("2019-01-01", "2019-01-01T23:59:59.999Z"), 55),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_search_matches_hand_filter(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]], case: str) -> None:
    bbox, dt, (start, end), max_cloud = CASES[case]
    items = _all(stac_api_real)
    want = _hand(items, geom=box(*bbox), start=start, end=end, max_cloud=max_cloud,
                 collections=tuple(stac_api_real))
    found = search(stac_api.url, bbox=bbox, datetime=dt, max_cloud=max_cloud)
    got = {(i.collection_id, i.id) for i in found}
    assert got == want
    assert len(found) == len(want)
    assert all(i.properties["eo:cloud_cover"] <= max_cloud for i in found)
    if case == "brazil-one-day":
        assert len(want) >= 2  # the case is not vacuous


def test_api_collection_aoi_sortby_limit(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    items = stac_api_real["sentinel-2-l2a"]
    aoi = box(168.0, 57.0, 175.0, 60.0)  # Kamchatka: PC tiles 59V*/60V*
    want = _hand(items, geom=aoi, collections=("sentinel-2-l2a",))
    found = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, sortby="-eo:cloud_cover")
    assert {(i.collection_id, i.id) for i in found} == want
    ccs = [i.properties["eo:cloud_cover"] for i in found]
    assert ccs == sorted(ccs, reverse=True)
    top = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, sortby="-eo:cloud_cover", limit=2)
    assert [i.id for i in top] == [i.id for i in found[:2]]
    # min and max cloud together (a CQL2 "and")
    mid = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, min_cloud=50, max_cloud=57)
    assert {i.id for i in mid} == {
        d["id"] for d in items if (d["collection"], d["id"]) in want and 50 <= d["properties"]["eo:cloud_cover"] <= 57
    }
    # items from the API map to scenes
    spec = scene_spec(found[0])
    assert spec.profile == "planetary-computer" and spec.bands["red"].offset == 0.0


def test_api_dedupes_reprocessed(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    src = [d for d in stac_api_real["sentinel-2-l2a"] if "T59V" in d["id"]][:3]
    reprocessed = []
    for d in src[:2]:
        r = copy.deepcopy(d)
        r["id"] = d["id"].rsplit("_", 1)[0] + "_20240101T000000"
        r["properties"]["s2:processing_baseline"] = "05.10"
        r["properties"]["s2:generation_time"] = "2024-01-01T00:00:00Z"
        reprocessed.append(r)
    coll = simple_collection("reprocessed-test", src + reprocessed)
    stac_api.load(coll, src + reprocessed)
    found = search(stac_api.url, collection="reprocessed-test")
    assert {i.id for i in found} == {reprocessed[0]["id"], reprocessed[1]["id"], src[2]["id"]}
    assert len(search(stac_api.url, collection="reprocessed-test", limit=2)) == 2


def test_unreachable_api_fails_fast_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    t0 = time.monotonic()
    with pytest.raises(CatalogUnreachableError, match="did not answer after 2 retries"):
        search(url, max_cloud=20, retry=RetryPolicy(total=2, backoff=0.05, timeout=2.0))
    assert time.monotonic() - t0 < 5.0
    assert sum("Retrying" in r.getMessage() for r in caplog.records) == 2


class _FakeApi:
    """A minimal STAC API on 127.0.0.1 whose POST /search answers 503 ``fail`` times, then one page."""

    def __init__(self, fail: int, item: dict[str, Any]) -> None:
        self.fail = fail
        self.item = item
        self.bodies: list[dict[str, Any]] = []
        self.search_calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, fake.landing())

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append(body)
                fake.search_calls += 1
                if fake.search_calls <= fake.fail:
                    self._send(503, {"code": "ServiceUnavailable"})
                else:
                    self._send(200, {"type": "FeatureCollection", "features": [fake.item], "links": []})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog", "id": "fake", "description": "fake", "stac_version": "1.0.0",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
                "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
                "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
            ],
            "links": [
                {"rel": "self", "href": self.url + "/", "type": "application/json"},
                {"rel": "root", "href": self.url + "/", "type": "application/json"},
                {"rel": "search", "href": self.url + "/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def __enter__(self) -> _FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_api_5xx_is_retried_and_cloud_cover_goes_as_cql2(stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    item = copy.deepcopy(stac_api_real["sentinel-2-c1-l2a"][0])
    item["properties"]["eo:cloud_cover"] = 10.0
    with _FakeApi(fail=2, item=item) as api:
        found = search(api.url, collection="sentinel-2-c1-l2a", max_cloud=20,
                       retry=RetryPolicy(total=3, backoff=0.01, timeout=2.0))
        assert [i.id for i in found] == [item["id"]]
        assert api.search_calls == 3
        body = api.bodies[-1]
        assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
        assert body["filter-lang"] == "cql2-json"
        assert "query" not in body
    with _FakeApi(fail=100, item=item) as api:
        t0 = time.monotonic()
        with pytest.raises(CatalogUnreachableError, match="after 2 retries"):
            search(api.url, max_cloud=20, retry=RetryPolicy(total=2, backoff=0.01, timeout=2.0))
        assert api.search_calls == 3
        assert time.monotonic() - t0 < 5.0


def test_api_drops_items_the_server_should_have_filtered(stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    """A server that ignores the filter (as some ignore ``query``) still yields only matching scenes."""
    item = copy.deepcopy(stac_api_real["sentinel-2-c1-l2a"][0])
    item["properties"]["eo:cloud_cover"] = 90.0
    with _FakeApi(fail=0, item=item) as api:
        assert search(api.url, max_cloud=20) == []
        assert len(search(api.url, min_cloud=20)) == 1


def test_api_http_404_is_a_catalog_error_not_unreachable(stac_api: Any) -> None:
    with pytest.raises(CatalogError) as err:
        search(stac_api.url + "/no/such/api", retry=RetryPolicy(total=1, backoff=0.01, timeout=2.0))
    assert not isinstance(err.value, CatalogUnreachableError | CatalogNotFoundError)
