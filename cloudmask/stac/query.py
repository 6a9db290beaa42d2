"""One search query, parsed in one place: collections, bbox, AOI, datetime, cloud range, limit, order.

:meth:`SearchQuery.build` is the only parser of search filters; the CLI (``search``/``run``), job
specs, the Python API and the Metis calibration set all go through it, so a bbox, an interval or a
cloud range means the same everywhere. Every mistake is a :class:`~cloudmask.errors.ConfigError`
naming the field.

Units: ``bbox`` in degrees (WGS84 lon/lat, ``west, south, east, north``; ``west > east`` crosses the
antimeridian, as in STAC), cloud cover in percent (0–100), datetimes as RFC 3339 (UTC when naive).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, TypeAlias

import isodate
import pystac
from shapely import wkt as shapely_wkt
from shapely.errors import GEOSException, ShapelyError
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from ..errors import CatalogError, ConfigError

__all__ = [
    "AoiLike",
    "DatetimeLike",
    "SearchQuery",
    "item_interval",
    "parse_aoi",
    "parse_bbox",
    "parse_datetime",
    "parse_duration",
    "parse_instant",
    "resolve_datetime",
]

AoiLike: TypeAlias = str | Path | Mapping[str, Any] | BaseGeometry
DatetimeLike: TypeAlias = str | datetime | date | tuple[str | datetime | date | None, str | datetime | date | None]
BBox: TypeAlias = tuple[float, float, float, float]

# ---------------------------------------------------------------------------------------------- bbox


def parse_bbox(value: str | Sequence[Any], field: str = "bbox") -> BBox:
    """``west,south,east,north`` in degrees (text or 4 numbers) as a tuple of floats.

    ``west > east`` is a box crossing the antimeridian (STAC's convention); longitudes must lie in
    [-180, 180], latitudes in [-90, 90] with ``south < north``.
    """
    parts: Sequence[Any] = [s for s in value.replace(" ", "").split(",") if s] if isinstance(value, str) else value
    try:
        if isinstance(parts, Mapping) or len(parts) != 4:
            raise ValueError
        west, south, east, north = (float(v) for v in parts)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"{field} needs 4 numbers: west,south,east,north in degrees (e.g. 5.9,45.8,10.5,47.8), got {value!r}"
        ) from err
    if not all(math.isfinite(v) for v in (west, south, east, north)):
        raise ConfigError(f"{field} {value!r} holds a non-finite number")
    if not (-180 <= west <= 180 and -180 <= east <= 180):
        raise ConfigError(f"{field} {value!r}: longitudes must lie within ±180 degrees")
    if not (-90 <= south <= 90 and -90 <= north <= 90):
        raise ConfigError(f"{field} {value!r}: latitudes must lie within ±90 degrees")
    if south >= north:
        raise ConfigError(f"{field} {value!r}: south ({south}) must be below north ({north}); "
                          "order is west,south,east,north")
    if west == east:
        raise ConfigError(f"{field} {value!r}: west and east are equal, the box has no width "
                          "(west < east, or west > east for a box crossing the antimeridian)")
    return west, south, east, north


def bbox_geometry(bbox: BBox) -> BaseGeometry:
    """The bbox as a polygon (two, split at ±180°, when it crosses the antimeridian)."""
    west, south, east, north = bbox
    if west > east:
        return box(west, south, 180.0, north).union(box(-180.0, south, east, north))
    return box(west, south, east, north)


# ----------------------------------------------------------------------------------------------- AOI


def parse_aoi(aoi: AoiLike, field: str = "AOI") -> BaseGeometry:
    """An area of interest (WGS84 lon/lat) as a shapely geometry.

    Accepts a GeoJSON file path, a GeoJSON dict (Geometry, Feature or FeatureCollection: the union
    of its features), a WKT string, a GeoJSON text, or a shapely geometry.
    """
    if isinstance(aoi, BaseGeometry):
        geom = aoi
    elif isinstance(aoi, Mapping):
        geom = _geojson_to_geom(aoi, field)
    else:
        text = str(aoi).strip()
        path = Path(text).expanduser()
        looks_like_path = len(text) < 4096 and not text.startswith(("{", "POLYGON", "MULTI", "POINT"))
        if looks_like_path and path.is_file():
            try:
                geom = _geojson_to_geom(json.loads(path.read_text()), str(path))
            except (OSError, json.JSONDecodeError) as err:
                raise ConfigError(f"cannot read {field} GeoJSON file {path}: {err}") from err
        elif text.startswith("{"):
            try:
                geom = _geojson_to_geom(json.loads(text), field)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{field} is neither a file nor valid GeoJSON text: {err}") from err
        else:
            try:
                geom = shapely_wkt.loads(text)
            except (ShapelyError, GEOSException, ValueError) as err:
                hint = f"no file {path} exists; " if looks_like_path else ""
                raise ConfigError(
                    f"{field} {text[:80]!r} is not a GeoJSON file, GeoJSON or WKT ({hint}{err}); "
                    "give a .geojson path, a GeoJSON geometry or WKT such as 'POLYGON((lon lat, ...))'"
                ) from err
    if geom.is_empty:
        raise ConfigError(f"{field} geometry is empty")
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


# ------------------------------------------------------------------------------------------ datetime

#: What ``--datetime`` accepts (the CLI's help text).
DATETIME_HELP = (
    "An RFC 3339 instant or interval (2024-06-01/2024-06-30, '..' for an open end), a date, a month "
    "(2024-06) or a year (2024), or a window ending now: 'last 10 days', 'past 36 hours', 'last 2 months' "
    "(calendar months), or an ISO 8601 duration such as P10D, PT36H, P1W, P1M, P1Y. Times are UTC."
)

_RELATIVE = re.compile(
    r"^\s*(?:last|past)\s+(\d+(?:\.\d+)?)\s*(minute|hour|day|week|month|year)s?\s*$", re.IGNORECASE
)

#: A window back from now: a fixed length, or calendar months/years (isodate's ``Duration``).
Window: TypeAlias = timedelta | isodate.Duration


def parse_duration(text: str) -> Window | None:
    """``"last 10 days"``, ``"past 2 months"``, ``"P10D"``, ``"PT12H"``, ``"P1W"``, ``"P1M"``, ``"P1Y"`` as a
    window; else None. Months and years are calendar ones (one month before 31 March is 29 February)."""
    m = _RELATIVE.match(text)
    if m:
        n, unit = float(m.group(1)), m.group(2).lower()
        if unit in ("month", "year"):
            if not n.is_integer():
                raise ConfigError(f"{text!r}: months and years must be whole numbers (or use days, e.g. 'last 45 days')")
            return isodate.Duration(**{unit + "s": int(n)})
        return timedelta(**{unit + "s": n})
    if not text.strip().upper().startswith("P"):
        return None
    try:
        window: Window = isodate.parse_duration(text.strip().upper())
    except (isodate.ISO8601Error, ValueError):
        return None
    return window if window else None  # "P0D": no window


def resolve_datetime(value: str | None, now: datetime | None = None) -> str | None:
    """A relative window (``"last 10 days"``, ``"P10D"``) as an absolute interval ending ``now``;
    any other value is returned as is."""
    if value is None:
        return None
    duration = parse_duration(value)
    if duration is None:
        return value
    end = (now or datetime.now(UTC)).astimezone(UTC)
    start: datetime = end - duration
    return f"{start:%Y-%m-%dT%H:%M:%SZ}/{end:%Y-%m-%dT%H:%M:%SZ}"


def parse_datetime(
    value: DatetimeLike | None, now: datetime | None = None
) -> tuple[datetime | None, datetime | None]:
    """A datetime filter as an inclusive UTC interval ``(start, end)``; ``None`` ends are open.

    Accepts ``"2024-06-01/2024-06-30"``, ``"2024-06"`` (a whole month), ``"2024"``, ``"../2024-01-01"``,
    a single instant, a date (the whole day), a relative window ending ``now`` (``"last 10 days"``,
    ``"P10D"``), or a ``(start, end)`` tuple. Naive times are UTC.
    """
    if value is None:
        return None, None
    if isinstance(value, str) and parse_duration(value) is not None:
        value = str(resolve_datetime(value, now))
    if isinstance(value, tuple | list):
        if len(value) != 2:
            raise ConfigError(f"datetime interval must have two ends, got {value!r}")
        start = parse_instant(value[0], end=False)
        end = parse_instant(value[1], end=True)
    elif isinstance(value, str) and "/" in value:
        a, _, b = value.partition("/")
        start, end = parse_instant(a, end=False), parse_instant(b, end=True)
    else:
        start, end = parse_instant(value, end=False), parse_instant(value, end=True)
    if start is not None and end is not None and start > end:
        raise ConfigError(f"datetime interval {value!r} ends before it starts")
    return start, end


def parse_instant(value: str | datetime | date | None, *, end: bool) -> datetime | None:
    """One end of an interval: ``end=True`` takes the last microsecond of a date, month or year."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        start = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return start + timedelta(days=1) - timedelta(microseconds=1) if end else start
    text = str(value).strip()
    if text in ("", ".."):
        return None
    m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
    try:
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
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise ConfigError(
            f"cannot read datetime {value!r}: use RFC 3339 (2024-06-01T10:00:00Z), a date (2024-06-01), "
            "a month (2024-06), a year, an interval 'start/end' with '..' for an open end, or a "
            "relative window ending now such as 'last 10 days', 'last 2 months', 'P10D', 'P1M' or 'P1Y'"
        ) from err
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------- items


def item_interval(item: pystac.Item) -> tuple[datetime | None, datetime | None]:
    """The item's time as a UTC interval (``datetime`` twice, or ``start_/end_datetime``)."""
    if item.datetime is not None:
        dt = item.datetime if item.datetime.tzinfo else item.datetime.replace(tzinfo=UTC)
        return dt, dt
    props = item.properties
    try:
        return (parse_instant(props.get("start_datetime"), end=False),
                parse_instant(props.get("end_datetime"), end=True))
    except ConfigError:
        return None, None


def item_geometry(item: pystac.Item) -> BaseGeometry | None:
    """The item's footprint (its geometry, else its bbox, split at the antimeridian).

    Raises :class:`CatalogError` (exit 4) when the geometry is not a GeoJSON object (e.g. a WKT string).
    """
    if item.geometry and not isinstance(item.geometry, Mapping):
        raise CatalogError(
            f"item {item.id}: its geometry is a {type(item.geometry).__name__} ({str(item.geometry)[:60]!r}), not a "
            "GeoJSON object; STAC items need GeoJSON geometry: fix the catalogue (for WKT: "
            "shapely.geometry.mapping(shapely.wkt.loads(text)))"
        )
    if item.geometry:
        try:
            return shape(item.geometry)
        except (ShapelyError, GEOSException, ValueError, TypeError):
            pass
    if item.bbox and len(item.bbox) >= 4:
        return bbox_geometry((item.bbox[0], item.bbox[1], item.bbox[-2], item.bbox[-1]))
    return None


def _parse_sortby(sortby: str | Sequence[str] | None) -> tuple[tuple[str, bool], ...]:
    """``"-eo:cloud_cover,properties.datetime"`` -> ``(("eo:cloud_cover", True), ("datetime", False))``."""
    if sortby is None:
        return ()
    parts = sortby.split(",") if isinstance(sortby, str) else list(sortby)
    out = []
    for part in parts:
        part = part.strip()
        if part:
            out.append((part.lstrip("+-").removeprefix("properties."), part.startswith("-")))
    return tuple(out)


def _cloud(value: Any, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ConfigError(f"{field} must be a percentage between 0 and 100, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------- query


@dataclass(frozen=True)
class SearchQuery:
    """What to search for. Build with :meth:`build`; every field is already validated.

    ``start``/``end`` are inclusive UTC bounds (``None``: open); cloud bounds in percent, inclusive
    (an item without ``eo:cloud_cover`` fails a cloud filter, as in CQL2); ``limit`` counts distinct
    scenes; ``sortby`` holds ``(property, descending)`` pairs.
    """

    collections: tuple[str, ...] | None = None
    bbox: BBox | None = None
    aoi: BaseGeometry | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_cloud: float | None = None
    min_cloud: float | None = None
    limit: int | None = None
    sortby: tuple[tuple[str, bool], ...] = ()

    @classmethod
    def build(
        cls,
        *,
        collection: str | Sequence[str] | None = None,
        bbox: str | Sequence[Any] | None = None,
        aoi: AoiLike | None = None,
        datetime: DatetimeLike | None = None,
        max_cloud: float | None = None,
        min_cloud: float | None = None,
        limit: int | None = None,
        sortby: str | Sequence[str] | None = None,
        now: datetime | None = None,
    ) -> SearchQuery:
        """Parse and check every filter (see the module docstring); ``now`` anchors relative windows."""
        collections: tuple[str, ...] | None
        if collection is None:
            collections = None
        elif isinstance(collection, str):
            collections = tuple(c.strip() for c in collection.split(",") if c.strip()) or None
        else:
            collections = tuple(str(c) for c in collection) or None
        lo, hi = _cloud(min_cloud, "min_cloud"), _cloud(max_cloud, "max_cloud")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"min_cloud {lo} is above max_cloud {hi}; swap them")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a whole number of scenes >= 1, got {limit!r}")
        start, end = parse_datetime(datetime, now)
        return cls(
            collections=collections,
            bbox=parse_bbox(bbox) if bbox is not None else None,
            aoi=parse_aoi(aoi) if aoi is not None else None,
            start=start, end=end, max_cloud=hi, min_cloud=lo, limit=limit, sortby=_parse_sortby(sortby),
        )

    # ---- derived

    @cached_property
    def geometry(self) -> BaseGeometry | None:
        """Where a scene must intersect: the bbox, the AOI, or both intersected (maybe empty)."""
        geom = bbox_geometry(self.bbox) if self.bbox is not None else None
        if self.aoi is not None:
            geom = self.aoi if geom is None else geom.intersection(self.aoi)
        return geom

    def interval(self) -> str | None:
        """The time filter as an RFC 3339 interval for a STAC API (``..`` for an open end)."""
        if self.start is None and self.end is None:
            return None
        return f"{_rfc3339(self.start) if self.start else '..'}/{_rfc3339(self.end) if self.end else '..'}"

    def cql2_filter(self) -> dict[str, Any] | None:
        """The cloud range as CQL2-JSON on ``eo:cloud_cover`` (percent)."""
        args: list[dict[str, Any]] = []
        if self.max_cloud is not None:
            args.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, self.max_cloud]})
        if self.min_cloud is not None:
            args.append({"op": ">=", "args": [{"property": "eo:cloud_cover"}, self.min_cloud]})
        if not args:
            return None
        return args[0] if len(args) == 1 else {"op": "and", "args": args}

    def api_params(self) -> dict[str, Any]:
        """Keyword arguments of ``pystac_client.Client.search`` for this query (no paging, no limit)."""
        kw: dict[str, Any] = {}
        if self.collections:
            kw["collections"] = list(self.collections)
        g = self.geometry
        if g is not None:
            if self.aoi is None and self.bbox is not None and self.bbox[0] <= self.bbox[2]:
                kw["bbox"] = list(self.bbox)
            else:
                kw["intersects"] = mapping(g)
        interval = self.interval()
        if interval:
            kw["datetime"] = interval
        if self.sortby:
            kw["sortby"] = [
                {"field": n if n in ("id", "collection") else f"properties.{n}", "direction": "desc" if d else "asc"}
                for n, d in self.sortby
            ]
        cql = self.cql2_filter()
        if cql is not None:
            kw["filter"] = cql
            kw["filter_lang"] = "cql2-json"
        return kw

    def with_collections(self, collections: Sequence[str]) -> SearchQuery:
        """This query for ``collections`` instead."""
        return replace(self, collections=tuple(collections))

    # ---- matching

    def match(self, item: pystac.Item) -> bool:
        """Whether ``item`` passes every filter (static catalogues, and as a check on API answers)."""
        if self.collections is not None and item.collection_id not in self.collections:
            return False
        if not self._cloud_ok(item):
            return False
        if (self.start is not None or self.end is not None) and not self._time_ok(item):
            return False
        g = self.geometry
        if g is not None:
            footprint = item_geometry(item)
            if footprint is None or not footprint.intersects(g):
                return False
        return True

    def _cloud_ok(self, item: pystac.Item) -> bool:
        if self.max_cloud is None and self.min_cloud is None:
            return True
        cc = item.properties.get("eo:cloud_cover")
        if not isinstance(cc, int | float) or isinstance(cc, bool) or math.isnan(cc):
            return False  # CQL2: a comparison with a missing property is not true
        if self.max_cloud is not None and cc > self.max_cloud:
            return False
        return not (self.min_cloud is not None and cc < self.min_cloud)

    def _time_ok(self, item: pystac.Item) -> bool:
        i_start, i_end = item_interval(item)
        if i_start is None and i_end is None:
            return False
        if self.end is not None and i_start is not None and i_start > self.end:
            return False
        return not (self.start is not None and i_end is not None and i_end < self.start)
