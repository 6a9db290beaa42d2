"""Static STAC catalogues on disk: ``catalog.json``/``collection.json``, a folder holding one, or an
ItemCollection ``.json``/``.geojson`` file, filtered in Python with :meth:`SearchQuery.match`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pystac

from ..errors import CatalogError, CatalogNotFoundError
from .dedupe import dedupe, sort_items
from .query import SearchQuery

__all__ = ["open_static", "search_static"]

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
    cat = open_static(path)
    try:
        items = [i for i in _iter_items(cat) if query.match(i)]
    except (pystac.STACError, OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CatalogError(f"cannot read the items of STAC catalogue {path}: {err}") from err
    found = dedupe(sort_items(items, query.sortby or (("datetime", False), ("id", False))))
    return found[: query.limit] if query.limit is not None else found
