"""Static STAC catalogues: ``catalog.json``/``collection.json``, a folder holding one, or an
ItemCollection ``.json``/``.geojson`` file, on disk or served over HTTP(S) (read by pystac through the
STAC API client's I/O: the same timeouts and retries), filtered in Python with :meth:`SearchQuery.match`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac
from pystac.stac_io import StacIO

from ..errors import CatalogError, CatalogNotFoundError
from .dedupe import dedupe, sort_items
from .query import SearchQuery

__all__ = ["open_static", "open_static_url", "search_static", "search_static_url"]

_HINT = "give the path of a catalog.json/collection.json (or a folder holding one), a STAC API URL, or a named endpoint"


def open_static(path: Path) -> pystac.Catalog | pystac.ItemCollection:
    """The catalogue, collection or ItemCollection at ``path`` (a file, or a folder holding one)."""
    if not path.exists():
        raise CatalogNotFoundError(f"STAC catalogue {path} does not exist: {_HINT}")
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
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


def open_static_url(url: str, stac_io: StacIO) -> pystac.Catalog | pystac.ItemCollection:
    """The static catalogue, collection or ItemCollection at ``url``, read through ``stac_io`` (which
    also reads every child and item link: give it the timeouts and retries)."""
    raw: Any = stac_io.read_json(url)
    kind = raw.get("type") if isinstance(raw, dict) else None
    try:
        if kind == "FeatureCollection":
            return pystac.ItemCollection.from_dict(raw, preserve_dict=False)
        if kind in ("Catalog", "Collection"):
            cls = pystac.Collection if kind == "Collection" else pystac.Catalog
            cat = cls.from_dict(raw, href=url, migrate=True, preserve_dict=False)
            cat._stac_io = stac_io  # children and items are read the same way
            return cat
    except (pystac.STACError, KeyError, ValueError, TypeError) as err:
        raise CatalogError(f"{url} is not a valid STAC catalogue: {err}") from err
    raise CatalogError(
        f"{url} is a {kind or 'non-STAC'} document, not a STAC Catalog, Collection or ItemCollection"
    )


def _iter_items(cat: pystac.Catalog | pystac.ItemCollection) -> Iterator[pystac.Item]:
    if isinstance(cat, pystac.ItemCollection):
        yield from cat.items
    else:
        yield from _walk(cat, (), set())


def _href_of(obj: pystac.STACObject) -> str:
    return obj.get_self_href() or f"<{obj.id}>"


def _walk(cat: pystac.Catalog, ancestors: tuple[str, ...], seen: set[str]) -> Iterator[pystac.Item]:
    """Items of ``cat`` and its children, depth first; a child link back to ``cat`` or one of its
    ancestors (a cycle) is a :class:`CatalogError`; a child reached twice by other paths is walked once."""
    here = _href_of(cat)
    path = (*ancestors, here)
    seen.add(here)
    yield from cat.get_items(recursive=False)
    root = cat.get_root()
    for link in cat.get_child_links():
        child = link.resolve_stac_object(root=root).target
        if not isinstance(child, pystac.Catalog):
            continue
        href = _href_of(child)
        if href in path:
            raise CatalogError(
                f"link cycle in STAC catalogue: {here} links to {href} as a child, but it is "
                + ("itself" if href == here else "one of its parents")
                + f" ({' -> '.join([*path, href])}); remove or fix that 'child' link"
            )
        if href not in seen:
            yield from _walk(child, path, seen)


def search_static(path: Path, query: SearchQuery) -> list[pystac.Item]:
    """Items of the catalogue at ``path`` that match ``query``, deduplicated, sorted (default: by
    datetime, then id) and cut to ``query.limit`` scenes."""
    return _filter(open_static(path), query, str(path))


def search_static_url(url: str, query: SearchQuery, stac_io: StacIO) -> list[pystac.Item]:
    """As :func:`search_static`, for a static catalogue served over HTTP(S) and read through ``stac_io``."""
    found = _filter(open_static_url(url, stac_io), query, url)
    for it in found:  # asset hrefs as URLs, not relative to an item document the reader no longer has
        it.make_asset_hrefs_absolute()
    return found


def _filter(cat: pystac.Catalog | pystac.ItemCollection, query: SearchQuery, where: str) -> list[pystac.Item]:
    try:
        items = [i for i in _iter_items(cat) if query.match(i)]
    except CatalogError:
        raise
    except (pystac.STACError, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        cause: BaseException | None = err
        while cause is not None:  # pystac wraps what the I/O raised (e.g. an unreachable item page)
            if isinstance(cause, CatalogError):
                raise cause from err
            cause = cause.__cause__ or cause.__context__
        raise CatalogError(f"cannot read the items of STAC catalogue {where}: {err}") from err
    found = dedupe(sort_items(items, query.sortby or (("datetime", False), ("id", False))))
    return found[: query.limit] if query.limit is not None else found
