"""What a Sentinel-2 STAC item says about its product: MGRS tile and processing baseline.

Shared by :mod:`.dedupe` (which processing is newest) and :mod:`cloudmask.profiles` (whether the
baseline-04.00 reflectance offset applies); reads metadata only, never assets.
"""

from __future__ import annotations

import re

import pystac

__all__ = ["mgrs_tile", "processing_baseline"]


def mgrs_tile(item: pystac.Item) -> str | None:
    """The item's MGRS tile (e.g. ``"31TCJ"``) from ``grid:code``, ``s2:mgrs_tile``, the ``mgrs:``/
    ``sentinel:`` triplets, or the item id; ``None`` if none says."""
    p = item.properties
    code = p.get("grid:code")
    if isinstance(code, str) and code:
        return code.removeprefix("MGRS-").upper()
    if isinstance(p.get("s2:mgrs_tile"), str):
        return str(p["s2:mgrs_tile"]).upper()
    for prefix in ("mgrs", "sentinel"):
        keys = (f"{prefix}:utm_zone", f"{prefix}:latitude_band", f"{prefix}:grid_square")
        if all(k in p for k in keys):
            return f"{int(p[keys[0]]):02d}{p[keys[1]]}{p[keys[2]]}".upper()
    m = re.search(r"_T?(\d{2}[C-X][A-Z]{2})_", item.id)
    return m.group(1) if m else None


def processing_baseline(item: pystac.Item) -> str | None:
    """The item's processing baseline as ``"NN.NN"`` (e.g. ``"05.11"``), or ``None`` if unknown.

    Looks at ``s2:processing_baseline``, ``processing:version``, then the ``_Nxxyy_`` part of product
    ids (``s2:product_uri``, ``sentinel:product_id``, the item id) or of ``s2:datatake_id``.
    """
    props = item.properties
    for key in ("s2:processing_baseline", "processing:version"):
        value = props.get(key)
        if isinstance(value, str) and re.fullmatch(r"\d{1,2}\.\d{1,2}", value.strip()):
            major, minor = value.strip().split(".")
            return f"{int(major):02d}.{int(minor):02d}"
    for key in ("s2:product_uri", "sentinel:product_id", "s2:datatake_id", "s2:tile_id", "id"):
        text = item.id if key == "id" else props.get(key)
        if not isinstance(text, str):
            continue
        m = re.search(r"_N(\d{2})\.?(\d{2})(?:_|\.|$)", text)
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None
