"""Finding Sentinel-2 scenes in STAC catalogues: one query, two back-ends.

* :mod:`.query`: :class:`SearchQuery`, the one parser of search filters (bbox incl. antimeridian,
  AOI, datetime incl. relative windows, cloud range, limit, order);
* :mod:`.static`: catalogues on disk, filtered in Python;
* :mod:`.api`: STAC APIs through pystac-client, with timeouts and retries on every request;
* :mod:`.dedupe`: reprocessed duplicates reduced to the newest processing, ordering;
* :mod:`.items`: what an item says about its product (tile, processing baseline);
* :mod:`.sign`: href signing (Planetary Computer).

From items to scenes is :mod:`cloudmask.profiles` (provider layouts as data). :func:`search`
dispatches a query to the right back-end; named endpoints are in :data:`ENDPOINTS`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pystac

from .api import DEFAULT_HTTP, HttpPolicy, search_api
from .dedupe import dedupe
from .query import AoiLike, DatetimeLike, SearchQuery, parse_aoi, parse_bbox, parse_datetime
from .sign import sign_item
from .static import search_static

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_HTTP",
    "ENDPOINTS",
    "Endpoint",
    "HttpPolicy",
    "SearchQuery",
    "dedupe",
    "is_remote",
    "parse_aoi",
    "parse_bbox",
    "parse_datetime",
    "search",
    "sign_item",
]


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


def is_remote(stac: str | Path) -> bool:
    """Whether ``stac`` names a STAC API (a URL or a named endpoint) rather than a local catalogue."""
    return str(stac) in ENDPOINTS or bool(re.match(r"^https?://", str(stac)))


def search(
    stac: str | Path,
    query: SearchQuery | None = None,
    *,
    collection: str | Sequence[str] | None = None,
    bbox: str | Sequence[float] | None = None,
    aoi: AoiLike | None = None,
    datetime: DatetimeLike | None = None,
    max_cloud: float | None = None,
    min_cloud: float | None = None,
    limit: int | None = None,
    sortby: str | Sequence[str] | None = None,
    http: HttpPolicy | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[pystac.Item]:
    """Sentinel-2 items of a STAC API, a static catalogue or a named endpoint that pass the filters.

    * ``stac``: an ``http(s)://`` STAC API URL, a named endpoint (:data:`ENDPOINTS`), or a local path
      to ``catalog.json``/``collection.json``/an ItemCollection file or a directory holding one.
    * ``query``: a built :class:`SearchQuery`; or the filters as keywords (see
      :meth:`SearchQuery.build`): ``collection`` (a named endpoint's default when ``None``), ``bbox``
      (degrees, ``west > east`` crosses the antimeridian), ``aoi`` (GeoJSON path/dict, WKT, shapely),
      ``datetime``, ``max_cloud``/``min_cloud`` (percent, inclusive), ``limit`` (scenes, after
      removing reprocessed duplicates), ``sortby`` (e.g. ``"-datetime"``).
    * ``http``: timeouts and retries of each API request (default :meth:`HttpPolicy.from_env`).

    Raises :class:`~cloudmask.errors.CatalogNotFoundError` for a missing local path,
    :class:`~cloudmask.errors.CatalogUnreachableError` when an API does not answer in time after the
    retries, :class:`~cloudmask.errors.ConfigError` for bad filters.
    """
    if query is None:
        query = SearchQuery.build(collection=collection, bbox=bbox, aoi=aoi, datetime=datetime, max_cloud=max_cloud,
                                  min_cloud=min_cloud, limit=limit, sortby=sortby)
    elif any(v is not None for v in (collection, bbox, aoi, datetime, max_cloud, min_cloud, limit, sortby)):
        raise TypeError("give a SearchQuery or filter keywords, not both")
    geometry = query.geometry
    if geometry is not None and geometry.is_empty:
        log.info("bbox and AOI do not overlap: no scene can match")
        return []
    source = str(stac)
    endpoint = ENDPOINTS.get(source)
    if endpoint is not None:
        if query.collections is None:
            query = query.with_collections([endpoint.collection])
        found = search_api(endpoint.url, query, http or HttpPolicy.from_env(), headers)
    elif is_remote(source):
        found = search_api(source, query, http or HttpPolicy.from_env(), headers)
    else:
        found = search_static(Path(source).expanduser(), query)
    log.info("%s: %d scene(s) match", source, len(found))
    return found

