"""Search results as scenes: reprocessed duplicates reduced to the newest processing, and ordering.

Reprocessed duplicates are the same MGRS tile and sensing second listed twice (e.g. baseline 02.12
and 05.00); :func:`dedupe` keeps the newest. :func:`sort_items` orders by properties the way a STAC
API's ``sortby`` does (missing values last).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import pystac

from .items import mgrs_tile, processing_baseline
from .query import item_interval, parse_instant

log = logging.getLogger(__name__)

__all__ = ["collect", "dedupe", "scene_key", "sort_items"]


def scene_key(item: pystac.Item) -> tuple[Any, ...]:
    """What identifies one scene: collection, MGRS tile and sensing second (else the item id)."""
    tile = mgrs_tile(item)
    start, _ = item_interval(item)
    if tile is None or start is None:
        return ("id", item.collection_id, item.id)
    return item.collection_id, tile, start.replace(microsecond=0)


def _instant(value: Any) -> datetime | None:
    try:
        return parse_instant(value, end=False) if isinstance(value, str) else None
    except Exception:  # noqa: BLE001 - an unreadable timestamp counts as missing
        return None


def _newness(item: pystac.Item) -> tuple[Any, ...]:
    p = item.properties
    baseline = processing_baseline(item) or "00.00"
    generated = _instant(p.get("s2:generation_time") or p.get("processing:datetime"))
    updated = _instant(p.get("updated") or p.get("created"))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return tuple(int(x) for x in baseline.split(".")), generated or epoch, updated or epoch, item.id


def dedupe(items: Iterable[pystac.Item]) -> list[pystac.Item]:
    """Drop reprocessed duplicates: of items with the same collection, MGRS tile and sensing second,
    keep the newest processing (highest processing baseline, then ``s2:generation_time``/
    ``processing:datetime``, then ``updated``). Keeps the order of first appearance."""
    best: dict[Any, pystac.Item] = {}
    order: list[Any] = []
    for item in items:
        key = scene_key(item)
        if key not in best:
            best[key] = item
            order.append(key)
        elif _newness(item) > _newness(best[key]):
            log.info("dropping %s: reprocessed as %s", best[key].id, item.id)
            best[key] = item
        else:
            log.info("dropping %s: reprocessed as %s", item.id, best[key].id)
    return [best[k] for k in order]


def collect(items: Iterable[pystac.Item], limit: int | None) -> list[pystac.Item]:
    """Pull ``items`` (maybe page by page) until ``limit`` distinct scenes are certain (duplicates of
    one scene arrive next to each other in datetime order), then :func:`dedupe`."""
    kept: list[pystac.Item] = []
    keys: set[Any] = set()
    for item in items:
        key = scene_key(item)
        if limit is not None and key not in keys and len(keys) >= limit:
            break
        keys.add(key)
        kept.append(item)
    return dedupe(kept)


def _sort_value(item: pystac.Item, name: str) -> Any:
    if name == "id":
        return item.id
    if name == "collection":
        return item.collection_id or ""
    if name == "datetime":
        return item_interval(item)[0]
    return item.properties.get(name)


def sort_items(items: list[pystac.Item], sortby: Sequence[tuple[str, bool]]) -> list[pystac.Item]:
    """``items`` ordered by ``(property, descending)`` keys, the first key first; missing values last."""
    for name, desc in reversed(sortby):
        present = [i for i in items if _sort_value(i, name) is not None]
        missing = [i for i in items if _sort_value(i, name) is None]
        present.sort(key=lambda i, n=name: _sort_value(i, n), reverse=desc)  # type: ignore[misc]
        items = present + missing
    return items
