"""Search STAC catalogues for Sentinel-2 scenes, and map items to scenes.

:func:`search` works the same over

* STAC APIs (through pystac-client; cloud cover goes to the server as a CQL2-JSON ``filter`` on
  ``eo:cloud_cover``, never as ``query``, which several servers silently ignore),
* static catalogues on disk (``catalog.json``/``collection.json``, a directory holding one, or an
  ItemCollection ``.json``/``.geojson`` file), filtered in Python with the same semantics,
* named endpoints: ``earth-search``, ``planetary-computer``, ``cdse`` (see :data:`ENDPOINTS`).

Reprocessed duplicates (the same tile and sensing time listed twice, e.g. baseline 02.12 and 05.00)
are reduced to the newest processing. Units: ``bbox`` in degrees (WGS84 lon/lat), cloud cover in
percent (0–100), datetimes as RFC 3339 (UTC assumed when naive).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pystac
from shapely import wkt as shapely_wkt
from shapely.errors import GEOSException, ShapelyError
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from .errors import CatalogError, CatalogNotFoundError, CatalogUnreachableError, ConfigError
from .profiles import detect_profile, get_profile, list_profiles, processing_baseline, scene_spec

log = logging.getLogger(__name__)

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "RetryPolicy",
    "dedupe",
    "detect_profile",
    "get_profile",
    "list_profiles",
    "parse_aoi",
    "parse_datetime",
    "scene_spec",
    "search",
]

# ------------------------------------------------------------------------------------------ endpoints


@dataclass(frozen=True)
class Endpoint:
    """A well-known STAC API: its URL, default collection and the profile of its items."""

    name: str
    url: str
    collection: str
    profile: str


#: Named STAC APIs accepted as ``stac`` by :func:`search`.
ENDPOINTS: dict[str, Endpoint] = {
    "earth-search": Endpoint(
        "earth-search", "https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a", "earth-search-c1-l2a"
    ),
    "planetary-computer": Endpoint(
        "planetary-computer",
        "https://planetarycomputer.microsoft.com/api/stac/v1",
        "sentinel-2-l2a",
        "planetary-computer",
    ),
    "cdse": Endpoint("cdse", "https://stac.dataspace.copernicus.eu/v1", "sentinel-2-l2a", "cdse"),
}


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for STAC API requests.

    ``total`` retries per request (connection errors, read timeouts, HTTP 429/5xx) with exponential
    backoff ``backoff * 2**n`` seconds capped at ``backoff_max``; ``timeout`` is the connect/read
    timeout of one request in seconds.
    """

    total: int = 3
    backoff: float = 0.5
    backoff_max: float = 8.0
    timeout: float = 30.0
    status_forcelist: tuple[int, ...] = (429, 500, 502, 503, 504)


DEFAULT_RETRY = RetryPolicy()

# ------------------------------------------------------------------------------------------ filters


def parse_aoi(aoi: str | Path | Mapping[str, Any] | BaseGeometry) -> BaseGeometry:
    """An area of interest (WGS84 lon/lat) as a shapely geometry.

    Accepts a GeoJSON file path, a GeoJSON dict (Geometry, Feature or FeatureCollection: the union
    of its features), a WKT string, a GeoJSON text, or a shapely geometry.
    """
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, Mapping):
        geom = _geojson_to_geom(aoi, "AOI")
    else:
        text = str(aoi).strip()
        path = Path(text).expanduser()
        looks_like_path = len(text) < 4096 and not text.startswith(("{", "POLYGON", "MULTI", "POINT"))
        if looks_like_path and path.is_file():
            try:
                geom = _geojson_to_geom(json.loads(path.read_text()), str(path))
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"cannot read AOI GeoJSON file {path}: {err}") from err
        elif text.startswith("{"):
            try:
                geom = _geojson_to_geom(json.loads(text), "AOI")
            except json.JSONDecodeError as err:
                raise ConfigError(f"AOI is neither a file nor valid GeoJSON text: {err}") from err
        else:
            try:
                geom = shapely_wkt.loads(text)
            except (ShapelyError, GEOSException, ValueError) as err:
                hint = f"no file {path} exists; " if looks_like_path else ""
                raise ConfigError(
                    f"AOI {text[:80]!r} is not a GeoJSON file, GeoJSON or WKT ({hint}{err}); "
                    "give a .geojson path, a GeoJSON geometry or WKT such as 'POLYGON((lon lat, ...))'"
                ) from err
    if geom.is_empty:
        raise ConfigError("AOI geometry is empty")
    if not geom.is_valid:
        geom = geom.buffer(0)
    return geom


def _geojson_to_geom(obj: Mapping[str, Any], source: str) -> BaseGeometry:
    kind = obj.get("type")
    try:
        if kind == "FeatureCollection":
            geoms = [shape(f["geometry"]) for f in obj.get("features", []) if f.get("geometry")]
            if not geoms:
                raise ConfigError(f"{source}: FeatureCollection has no geometry")
            return unary_union(geoms)
        if kind == "Feature":
            if not obj.get("geometry"):
                raise ConfigError(f"{source}: Feature has no geometry")
            return shape(obj["geometry"])
        return shape(obj)
    except (KeyError, TypeError, ValueError, AttributeError, ShapelyError, GEOSException) as err:
        raise ConfigError(f"{source}: not a GeoJSON geometry, Feature or FeatureCollection ({err})") from err


DatetimeLike = str | datetime | date | tuple[str | datetime | date | None, str | datetime | date | None]


def parse_datetime(value: DatetimeLike | None) -> tuple[datetime | None, datetime | None]:
    """A datetime filter as an inclusive UTC interval ``(start, end)``; ``None`` ends are open.

    Accepts ``"2024-06-01/2024-06-30"``, ``"2024-06"`` (a whole month), ``"2024"``, ``"../2024-01-01"``,
    a single instant, a date (the whole day), or a ``(start, end)`` tuple. Naive times are UTC.
    """
    if value is None:
        return None, None
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ConfigError(f"datetime interval must have two ends, got {value!r}")
        start = _parse_instant(value[0], end=False)
        end = _parse_instant(value[1], end=True)
    elif isinstance(value, str) and "/" in value:
        a, _, b = value.partition("/")
        start, end = _parse_instant(a, end=False), _parse_instant(b, end=True)
    else:
        start, end = _parse_instant(value, end=False), _parse_instant(value, end=True)
    if start is not None and end is not None and start > end:
        raise ConfigError(f"datetime interval {value!r} ends before it starts")
    return start, end


def _parse_instant(value: str | datetime | date | None, *, end: bool) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        start = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return start + timedelta(days=1) - timedelta(microseconds=1) if end else start
    text = value.strip()
    if text in ("", ".."):
        return None
    m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
    if m:
        year, month, day = int(m.group(1)), m.group(2), m.group(3)
        if day is not None:
            start = datetime(year, int(month or 1), int(day), tzinfo=UTC)
            nxt = start + timedelta(days=1)
        elif month is not None:
            start = datetime(year, int(month), 1, tzinfo=UTC)
            nxt = datetime(year + (int(month) == 12), int(month) % 12 + 1, 1, tzinfo=UTC)
        else:
            start = datetime(year, 1, 1, tzinfo=UTC)
            nxt = datetime(year + 1, 1, 1, tzinfo=UTC)
        return nxt - timedelta(microseconds=1) if end else start
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise ConfigError(
            f"cannot read datetime {value!r}: use RFC 3339 (2024-06-01T10:00:00Z), a date (2024-06-01), "
            "a month (2024-06), a year, or an interval 'start/end' with '..' for an open end"
        ) from err
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _interval_str(start: datetime | None, end: datetime | None) -> str | None:
    if start is None and end is None:
        return None
    return f"{_rfc3339(start) if start else '..'}/{_rfc3339(end) if end else '..'}"


def _cloud_filter(max_cloud: float | None, min_cloud: float | None) -> dict[str, Any] | None:
    """CQL2-JSON filter on ``eo:cloud_cover`` (percent)."""
    args: list[dict[str, Any]] = []
    if max_cloud is not None:
        args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, float(max_cloud)]})
    if min_cloud is not None:
        args.append({"op": ">=", "args": [{"property": "eo:cloud_cover"}, float(min_cloud)]})
    if not args:
        return None
    return args[0] if len(args) == 1 else {"op": "and", "args": args}


@dataclass(frozen=True)
class _Filters:
    collections: tuple[str, ...] | None
    geometry: BaseGeometry | None
    start: datetime | None
    end: datetime | None
    max_cloud: float | None
    min_cloud: float | None

    def match(self, item: pystac.Item) -> bool:
        """The filters applied in Python (static catalogues, and as a check on API answers)."""
        if self.collections is not None and item.collection_id not in self.collections:
            return False
        if not _cloud_ok(item, self.max_cloud, self.min_cloud):
            return False
        if (self.start is not None or self.end is not None) and not _time_ok(item, self.start, self.end):
            return False
        if self.geometry is not None:
            geom = _item_geometry(item)
            if geom is None or not geom.intersects(self.geometry):
                return False
        return True


def _cloud_ok(item: pystac.Item, max_cloud: float | None, min_cloud: float | None) -> bool:
    if max_cloud is None and min_cloud is None:
        return True
    cc = item.properties.get("eo:cloud_cover")
    if not isinstance(cc, int | float) or isinstance(cc, bool) or math.isnan(cc):
        return False  # CQL2: a comparison with a missing property is not true
    if max_cloud is not None and cc > max_cloud:
        return False
    return not (min_cloud is not None and cc < min_cloud)


def _item_interval(item: pystac.Item) -> tuple[datetime | None, datetime | None]:
    props = item.properties
    if item.datetime is not None:
        dt = item.datetime if item.datetime.tzinfo else item.datetime.replace(tzinfo=UTC)
        return dt, dt
    return (_parse_instant(props.get("start_datetime"), end=False),
            _parse_instant(props.get("end_datetime"), end=True))


def _time_ok(item: pystac.Item, start: datetime | None, end: datetime | None) -> bool:
    i_start, i_end = _item_interval(item)
    if i_start is None and i_end is None:
        return False
    if end is not None and i_start is not None and i_start > end:
        return False
    return not (start is not None and i_end is not None and i_end < start)


def _item_geometry(item: pystac.Item) -> BaseGeometry | None:
    if item.geometry:
        try:
            return shape(item.geometry)
        except (ShapelyError, GEOSException, ValueError, TypeError):
            pass
    if item.bbox and len(item.bbox) >= 4:
        west, south, east, north = item.bbox[0], item.bbox[1], item.bbox[-2], item.bbox[-1]
        if west > east:  # crosses the antimeridian
            return box(west, south, 180.0, north).union(box(-180.0, south, east, north))
        return box(west, south, east, north)
    return None


def _search_geometry(
    bbox: Sequence[float] | None, aoi: str | Path | Mapping[str, Any] | BaseGeometry | None
) -> BaseGeometry | None:
    geom: BaseGeometry | None = None
    if bbox is not None:
        if len(bbox) != 4:
            raise ConfigError(f"bbox needs 4 numbers (west, south, east, north in degrees), got {list(bbox)}")
        west, south, east, north = (float(v) for v in bbox)
        if south > north:
            raise ConfigError(f"bbox south {south} is north of north {north}; order is west, south, east, north")
        geom = (box(west, south, 180.0, north).union(box(-180.0, south, east, north))
                if west > east else box(west, south, east, north))
    if aoi is not None:
        area = parse_aoi(aoi)
        geom = area if geom is None else geom.intersection(area)
    return geom


# ------------------------------------------------------------------------------------------ dedupe


def _tile_of(item: pystac.Item) -> str | None:
    p = item.properties
    code = p.get("grid:code")
    if isinstance(code, str) and code:
        return code.removeprefix("MGRS-").upper()
    if isinstance(p.get("s2:mgrs_tile"), str):
        return str(p["s2:mgrs_tile"]).upper()
    if all(k in p for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square")):
        return f"{int(p['mgrs:utm_zone']):02d}{p['mgrs:latitude_band']}{p['mgrs:grid_square']}".upper()
    if all(k in p for k in ("sentinel:utm_zone", "sentinel:latitude_band", "sentinel:grid_square")):
        return f"{int(p['sentinel:utm_zone']):02d}{p['sentinel:latitude_band']}{p['sentinel:grid_square']}".upper()
    m = re.search(r"_T?(\d{2}[C-X][A-Z]{2})_", item.id)
    return m.group(1) if m else None


def _dedupe_key(item: pystac.Item) -> tuple[Any, ...] | None:
    tile = _tile_of(item)
    start, _ = _item_interval(item)
    if tile is None or start is None:
        return None
    return item.collection_id, tile, start.replace(microsecond=0)


def _newness(item: pystac.Item) -> tuple[Any, ...]:
    p = item.properties
    baseline = processing_baseline(item) or "00.00"
    generated = _parse_instant(p.get("s2:generation_time") or p.get("processing:datetime"), end=False)
    updated = _parse_instant(p.get("updated") or p.get("created"), end=False)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return tuple(int(x) for x in baseline.split(".")), generated or epoch, updated or epoch, item.id


def dedupe(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Drop reprocessed duplicates: of items with the same collection, MGRS tile and sensing second,
    keep the newest processing (highest processing baseline, then ``s2:generation_time``/
    ``processing:datetime``, then ``updated``). Keeps the order of first appearance."""
    best: dict[Any, pystac.Item] = {}
    order: list[Any] = []
    for item in items:
        key = _dedupe_key(item)
        if key is None:
            key = ("id", item.collection_id, item.id)
        if key not in best:
            best[key] = item
            order.append(key)
        elif _newness(item) > _newness(best[key]):
            log.info("dropping %s: reprocessed as %s", best[key].id, item.id)
            best[key] = item
        else:
            log.info("dropping %s: reprocessed as %s", item.id, best[key].id)
    return [best[k] for k in order]


# ------------------------------------------------------------------------------------------ sorting


def _parse_sortby(sortby: str | Sequence[str] | None) -> list[tuple[str, bool]]:
    """``"-eo:cloud_cover,properties.datetime"`` -> ``[("eo:cloud_cover", True), ("datetime", False)]``."""
    if sortby is None:
        return []
    parts = sortby.split(",") if isinstance(sortby, str) else list(sortby)
    out = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        desc = part.startswith("-")
        name = part.lstrip("+-").removeprefix("properties.")
        out.append((name, desc))
    return out


def _sort_value(item: pystac.Item, name: str) -> Any:
    if name == "id":
        return item.id
    if name == "collection":
        return item.collection_id or ""
    if name == "datetime":
        start, _ = _item_interval(item)
        return start
    return item.properties.get(name)


def _sort(items: list[pystac.Item], sortby: list[tuple[str, bool]]) -> list[pystac.Item]:
    for name, desc in reversed(sortby):
        present = [i for i in items if _sort_value(i, name) is not None]
        missing = [i for i in items if _sort_value(i, name) is None]
        present.sort(key=lambda i, n=name: _sort_value(i, n), reverse=desc)  # type: ignore[misc]
        items = present + missing
    return items


# ------------------------------------------------------------------------------------------ search


def search(
    stac: str | Path,
    *,
    collection: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    aoi: str | Path | Mapping[str, Any] | BaseGeometry | None = None,
    datetime: DatetimeLike | None = None,
    max_cloud: float | None = None,
    min_cloud: float | None = None,
    limit: int | None = None,
    sortby: str | Sequence[str] | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
    headers: Mapping[str, str] | None = None,
) -> list[pystac.Item]:
    """Sentinel-2 items of a STAC API, a static catalogue or a named endpoint that pass the filters.

    * ``stac``: an ``http(s)://`` STAC API URL, a named endpoint (:data:`ENDPOINTS`), or a local path
      to ``catalog.json``/``collection.json``/an ItemCollection file or a directory holding one.
    * ``collection``: collection id(s); a named endpoint's default collection when ``None``.
    * ``bbox``: ``(west, south, east, north)`` in degrees; ``aoi``: a GeoJSON path/dict or WKT. A
      scene counts when its footprint intersects both.
    * ``datetime``: interval (see :func:`parse_datetime`); ``max_cloud``/``min_cloud``: ``eo:cloud_cover``
      bounds in percent, inclusive (items without cloud cover fail a cloud filter).
    * ``limit``: most scenes returned (after removing reprocessed duplicates).
    * ``sortby``: e.g. ``"-datetime"`` or ``"eo:cloud_cover"`` (``+``/``-`` prefix, comma separated).

    Raises :class:`CatalogNotFoundError` for a missing local path, :class:`CatalogUnreachableError`
    when an API does not answer after ``retry.total`` retries, :class:`ConfigError` for bad filters.
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be >= 0, got {limit}")
    if max_cloud is not None and min_cloud is not None and min_cloud > max_cloud:
        raise ConfigError(f"min_cloud {min_cloud} is above max_cloud {max_cloud}")
    collections: tuple[str, ...] | None
    if collection is None:
        collections = None
    elif isinstance(collection, str):
        collections = tuple(c.strip() for c in collection.split(",") if c.strip())
    else:
        collections = tuple(collection)
    start, end = parse_datetime(datetime)
    geometry = _search_geometry(bbox, aoi)
    if geometry is not None and geometry.is_empty:
        log.info("bbox and AOI do not overlap: no scene can match")
        return []
    filters = _Filters(collections, geometry, start, end, max_cloud, min_cloud)
    sort_keys = _parse_sortby(sortby)

    source = str(stac)
    endpoint = ENDPOINTS.get(source)
    if endpoint is not None:
        if filters.collections is None:
            filters = _Filters((endpoint.collection,), geometry, start, end, max_cloud, min_cloud)
        found = _search_api(endpoint.url, filters, limit, sort_keys, retry, headers, endpoint=endpoint)
    elif re.match(r"^https?://", source):
        found = _search_api(source, filters, limit, sort_keys, retry, headers)
    else:
        found = _search_static(Path(source).expanduser(), filters, sort_keys)
        found = dedupe(found)
        if limit is not None:
            found = found[:limit]
    log.info("%s: %d scene(s) match", source, len(found))
    return found


# ---- static


def _open_static(path: Path) -> pystac.Catalog | pystac.ItemCollection:
    if not path.exists():
        raise CatalogNotFoundError(
            f"STAC catalogue {path} does not exist: give the path of a catalog.json/collection.json "
            "(or a folder holding one), a STAC API URL, or one of " + ", ".join(ENDPOINTS)
        )
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CatalogNotFoundError(
                f"folder {path} holds no catalog.json or collection.json; point at the catalogue file itself"
            )
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CatalogError(f"cannot read STAC catalogue {path}: {err}") from err
    kind = raw.get("type") if isinstance(raw, dict) else None
    try:
        if kind == "FeatureCollection":
            return pystac.ItemCollection.from_dict(raw, preserve_dict=False)
        if kind in ("Catalog", "Collection"):
            return pystac.read_file(path)  # type: ignore[return-value]
    except (pystac.STACError, KeyError, ValueError, TypeError) as err:
        raise CatalogError(f"{path} is not a valid STAC catalogue: {err}") from err
    raise CatalogError(
        f"{path} is a {kind or 'non-STAC'} document, not a STAC Catalog, Collection or ItemCollection"
    )


def _iter_static(cat: pystac.Catalog | pystac.ItemCollection) -> Iterator[pystac.Item]:
    if isinstance(cat, pystac.ItemCollection):
        yield from cat.items
    else:
        yield from cat.get_items(recursive=True)


def _search_static(path: Path, filters: _Filters, sort_keys: list[tuple[str, bool]]) -> list[pystac.Item]:
    cat = _open_static(path)
    try:
        items = [i for i in _iter_static(cat) if filters.match(i)]
    except (pystac.STACError, OSError, json.JSONDecodeError) as err:
        raise CatalogError(f"cannot read the items of STAC catalogue {path}: {err}") from err
    keys = sort_keys or [("datetime", False), ("id", False)]
    return _sort(items, keys)


# ---- API


def _stac_api_io(retry: RetryPolicy, headers: Mapping[str, str] | None) -> Any:
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    policy = Retry(
        total=retry.total,
        connect=retry.total,
        read=retry.total,
        status=retry.total,
        backoff_factor=retry.backoff,
        backoff_max=retry.backoff_max,
        status_forcelist=retry.status_forcelist,
        allowed_methods=None,  # POST /search is safe to repeat
        raise_on_status=True,
        respect_retry_after_header=True,
    )
    return StacApiIO(headers=dict(headers or {}), timeout=retry.timeout, max_retries=policy)


def _unreachable(url: str, err: BaseException, retry: RetryPolicy) -> CatalogUnreachableError:
    return CatalogUnreachableError(
        f"STAC API {url} did not answer after {retry.total} retries ({_short(err)}); check the URL and "
        "your network, or try again later"
    )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def _is_transport_error(err: BaseException) -> bool:
    import requests
    from pystac_client.exceptions import APIError

    if isinstance(err, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(err, APIError):
        status = getattr(err, "status_code", None)
        if status is None:  # pystac-client wraps transport errors without a status code
            return True
        return int(status) >= 500 or int(status) == 429
    return False


def _search_api(
    url: str,
    filters: _Filters,
    limit: int | None,
    sort_keys: list[tuple[str, bool]],
    retry: RetryPolicy,
    headers: Mapping[str, str] | None,
    endpoint: Endpoint | None = None,
) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    modifier = None
    if endpoint is not None and endpoint.name == "planetary-computer":
        try:
            import planetary_computer

            modifier = planetary_computer.sign_inplace
        except ImportError:
            log.info("planetary-computer not installed: Planetary Computer hrefs stay unsigned")
    try:
        client = Client.open(url, stac_io=_stac_api_io(retry, headers), modifier=modifier)
    except Exception as err:  # transport errors come wrapped in APIError or as requests errors
        if _is_transport_error(err):
            raise _unreachable(url, err, retry) from err
        raise CatalogError(f"cannot open STAC API {url}: {_short(err)}") from err

    kwargs: dict[str, Any] = {"max_items": None, "limit": 100}
    if filters.collections:
        kwargs["collections"] = list(filters.collections)
    if filters.geometry is not None:
        g = filters.geometry
        if g.equals(g.envelope):
            kwargs["bbox"] = list(g.bounds)
        else:
            kwargs["intersects"] = mapping(g)
    interval = _interval_str(filters.start, filters.end)
    if interval:
        kwargs["datetime"] = interval
    if sort_keys:
        kwargs["sortby"] = [
            {"field": name if name in ("id", "collection") else f"properties.{name}", "direction": "desc" if desc else "asc"}
            for name, desc in sort_keys
        ]
    cql = _cloud_filter(filters.max_cloud, filters.min_cloud)
    if cql is not None:
        kwargs["filter"] = cql
        kwargs["filter_lang"] = "cql2-json"

    def run(kw: dict[str, Any]) -> list[pystac.Item]:
        return _collect(client.search(**kw).items(), filters, limit)

    try:
        try:
            items = run(kwargs)
        except Exception as err:
            if cql is not None and _is_conformance_error(err):
                log.warning(
                    "STAC API %s does not declare CQL2 filter support; filtering cloud cover locally", url
                )
                kwargs.pop("filter")
                kwargs.pop("filter_lang")
                items = run(kwargs)
            elif sort_keys and _is_conformance_error(err):
                log.warning("STAC API %s does not support sortby; sorting locally", url)
                kwargs.pop("sortby")
                items = run(kwargs)
            else:
                raise
    except CatalogError:
        raise
    except Exception as err:
        if _is_transport_error(err):
            raise _unreachable(url, err, retry) from err
        if isinstance(err, APIError):
            raise CatalogError(f"STAC API {url} refused the search: {_short(err)}") from err
        raise
    # servers that ignore sortby (it is an optional extension) still give a sorted answer
    return _sort(items, sort_keys) if sort_keys else items


def _is_conformance_error(err: BaseException) -> bool:
    try:
        from pystac_client.warnings import DoesNotConformTo
    except ImportError:  # pragma: no cover - older pystac-client
        return False
    return isinstance(err, DoesNotConformTo)


def _collect(items: Iterable[pystac.Item], filters: _Filters, limit: int | None) -> list[pystac.Item]:
    """Pull items page by page, check the filters locally, and stop once ``limit`` distinct scenes
    are certain (duplicates of one scene arrive next to each other in datetime order)."""
    kept: list[pystac.Item] = []
    keys: set[Any] = set()
    for item in items:
        if not filters.match(item):
            log.debug("server returned %s that does not pass the filters; dropped", item.id)
            continue
        key = _dedupe_key(item) or ("id", item.collection_id, item.id)
        if limit is not None and key not in keys and len(keys) >= limit:
            break
        keys.add(key)
        kept.append(item)
    return dedupe(kept)
