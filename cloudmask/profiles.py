"""Provider profiles: from a STAC item to a :class:`~cloudmask.scene.SceneSpec`.

Each STAC provider lays out Sentinel-2 differently (asset keys, where scale/offset live, how the
processing-baseline 04.00 ``+1000 DN`` offset is declared, how hrefs are accessed). Profiles are
*data* (``cloudmask/data/profiles.json``), not code branches: a profile names

* the candidate asset keys of each band (STAC common names ``coastal`` ... ``swir22`` plus ``scl``),
* the ordered sources of scale/offset (``boa_flag``, ``raster``, ``baseline``),
* the product level (``l1c``/``l2a``, or ``auto`` from the item),
* detection rules (collection ids, asset keys, property names, href prefixes),
* GDAL/AWS settings the reader needs for its hrefs (``gdal_env``), and href signing.

Reflectance is ``DN * scale + offset`` (unitless, 0–1). Resolutions and bounds are in metres of
the item's projected CRS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import pystac

from .errors import ItemLayoutError, UnknownProfileError
from .scene import BandAsset, SceneSpec
from .stac.items import processing_baseline
from .stac.query import item_interval
from .stac.sign import SIGNERS, sign_href

log = logging.getLogger(__name__)

#: Bands a profile may map, in Sentinel-2 order (``scl`` is the L2A scene classification).
BANDS: tuple[str, ...] = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "nir09", "cirrus", "swir16", "swir22", "scl",
)
#: Bands whose values are classes, not reflectance (scale 1, offset 0).
CLASS_BANDS: frozenset[str] = frozenset({"scl"})
#: DN scale of Sentinel-2 L1C/L2A reflectance products.
S2_SCALE = 1e-4
#: Reflectance offset of products with processing baseline >= 04.00 (``-1000 DN * 1e-4``).
S2_OFFSET_0400 = -0.1
#: First processing baseline that carries the ``+1000 DN`` radiometric offset.
BASELINE_OFFSET_FROM = (4, 0)
#: Sensing date from which ESA's operational processing used baseline 04.00 (fallback only).
BASELINE_0400_SINCE = datetime(2022, 1, 25, tzinfo=UTC)
#: Property key under which :func:`scene_spec` puts the processing baseline it used (str or None).
BASELINE_KEY = "cloudmask:processing_baseline"

_GRID_BANDS = ("red", "green", "blue", "nir")  # 10 m bands whose grid is the tile grid
_SCALE_SOURCES = ("boa_flag", "raster", "baseline")


@dataclass(frozen=True)
class Profile:
    """How one provider lays out Sentinel-2 items (see the module docstring)."""

    name: str
    title: str
    assets: Mapping[str, tuple[str, ...]]
    product_level: str = "auto"
    detect: tuple[Mapping[str, Any], ...] = ()
    scale_offset: tuple[str, ...] = ("raster", "baseline")
    gdal_env: Mapping[str, str] = field(default_factory=dict)
    sign: str | None = None
    aliases: tuple[str, ...] = ()

    def matches(self, item: pystac.Item) -> bool:
        """Whether any of this profile's detection rules holds for ``item``."""
        return any(_rule_matches(rule, item) for rule in self.detect)

    def asset_key(self, item: pystac.Item, band: str) -> str | None:
        """The first candidate asset key of ``band`` that ``item`` has, or ``None``."""
        return next((k for k in self.assets.get(band, ()) if k in item.assets), None)


def _rule_matches(rule: Mapping[str, Any], item: pystac.Item) -> bool:
    checks: list[bool] = []
    if "collections" in rule:
        checks.append(item.collection_id in rule["collections"])
    if "assets_any" in rule:
        checks.append(any(k in item.assets for k in rule["assets_any"]))
    if "assets_all" in rule:
        checks.append(all(k in item.assets for k in rule["assets_all"]))
    if "properties_any" in rule:
        checks.append(any(k in item.properties for k in rule["properties_any"]))
    if "href_prefix" in rule:
        prefixes = tuple(rule["href_prefix"])
        checks.append(any(a.href.startswith(prefixes) for a in item.assets.values()))
    return bool(checks) and all(checks)


@dataclass(frozen=True)
class _Table:
    profiles: tuple[Profile, ...]
    native_resolution: Mapping[str, float]


def _load_table() -> _Table:
    raw = json.loads(resources.files("cloudmask").joinpath("data/profiles.json").read_text())
    profiles = []
    for p in raw["profiles"]:
        unknown_src = [s for s in p.get("scale_offset", ()) if s not in _SCALE_SOURCES]
        if unknown_src:  # pragma: no cover - guards the data file
            raise ValueError(f"profile {p['name']}: unknown scale_offset source(s) {unknown_src}")
        if p.get("sign") not in (None, *SIGNERS):  # pragma: no cover - guards the data file
            raise ValueError(f"profile {p['name']}: unknown signing scheme {p['sign']!r}")
        profiles.append(
            Profile(
                name=p["name"],
                title=p.get("title", p["name"]),
                assets={b: tuple(keys) for b, keys in p["assets"].items()},
                product_level=p.get("product_level", "auto"),
                detect=tuple(p.get("detect", ())),
                scale_offset=tuple(p.get("scale_offset", ("raster", "baseline"))),
                gdal_env=dict(p.get("gdal_env", {})),
                sign=p.get("sign"),
                aliases=tuple(p.get("aliases", ())),
            )
        )
    return _Table(tuple(profiles), {k: float(v) for k, v in raw["native_resolution"].items()})


_TABLE: _Table | None = None


def _table() -> _Table:
    global _TABLE  # a read-only cache of package data, filled on first use (not at import)
    if _TABLE is None:
        _TABLE = _load_table()
    return _TABLE


def list_profiles() -> list[Profile]:
    """Every built-in profile, in detection order."""
    return list(_table().profiles)


def describe_rule(rule: Mapping[str, Any]) -> str:
    """A detection rule in words, e.g. ``collection sentinel-2-l2a and asset B02|B04|B08``."""
    words = {"collections": "collection", "assets_any": "asset", "assets_all": "all assets",
             "properties_any": "property", "href_prefix": "href starts"}
    sep = {"assets_all": "+"}
    return " and ".join(f"{words.get(k, k)} {sep.get(k, '|').join(map(str, v))}" for k, v in rule.items())


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (or one of its aliases); :class:`UnknownProfileError` (exit 2) if unknown."""
    for p in _table().profiles:
        if name == p.name or name in p.aliases:
            return p
    names = ", ".join(p.name for p in _table().profiles)
    raise UnknownProfileError(f"unknown profile '{name}': use one of {names} (see `cloudmask profiles`)")


def detect_profile(item: pystac.Item) -> Profile:
    """The first profile whose detection rules match ``item``.

    Raises :class:`ItemLayoutError` naming the asset keys known layouts expect when none matches.
    """
    for p in _table().profiles:
        if p.matches(item):
            log.debug("item %s: detected profile %s", item.id, p.name)
            return p
    expected = "; ".join(
        f"{p.name}: {', '.join(p.assets['red'][:1] + p.assets['nir'][:1])}" for p in _table().profiles
    )
    have = ", ".join(sorted(item.assets)) or "none"
    raise ItemLayoutError(
        f"item {item.id} (collection {item.collection_id}) matches no known Sentinel-2 layout: it lacks "
        f"the band assets of every profile (expected e.g. red/nir as {expected}); it has assets: {have}. "
        "Pass --profile NAME if the layout is one of these under another collection id."
    )


# ------------------------------------------------------------------------------------------ metadata


def _baseline_tuple(baseline: str | None) -> tuple[int, int] | None:
    if baseline is None:
        return None
    major, minor = baseline.split(".")
    return int(major), int(minor)


def product_level(item: pystac.Item, profile: Profile | None = None) -> str:
    """``"l1c"`` or ``"l2a"``: from the profile, else from the item's metadata (default ``l2a``)."""
    if profile is not None and profile.product_level in ("l1c", "l2a"):
        return profile.product_level
    props = item.properties
    hints = [
        props.get("s2:product_type"), props.get("product:type"), props.get("processing:level"),
        props.get("sentinel:product_id"), props.get("s2:product_uri"), item.collection_id, item.id,
    ]
    for hint in hints:
        if not isinstance(hint, str):
            continue
        h = hint.upper()
        if "L1C" in h or "MSI1C" in h or h == "L1":
            return "l1c"
        if "L2A" in h or "MSI2A" in h or h == "L2":
            return "l2a"
    return "l2a"


def _raster_band(asset: pystac.Asset) -> Mapping[str, Any]:
    """Raster info of an asset: ``raster:bands[0]`` (STAC 1.0) or the asset's own raster v2 fields."""
    extra = asset.extra_fields
    rb = extra.get("raster:bands")
    out: dict[str, Any] = {}
    if isinstance(rb, list) and rb and isinstance(rb[0], Mapping):
        out.update(rb[0])
    bands = extra.get("bands")  # STAC 1.1: fields may sit in bands[0] or on the asset
    if isinstance(bands, list) and bands and isinstance(bands[0], Mapping):
        for k in ("nodata", "raster:scale", "raster:offset", "raster:spatial_resolution"):
            if k in bands[0]:
                out.setdefault(k.removeprefix("raster:"), bands[0][k])
    for k in ("nodata", "raster:scale", "raster:offset", "raster:spatial_resolution"):
        if k in extra:
            out.setdefault(k.removeprefix("raster:"), extra[k])
    return out


def _scale_offset(
    item: pystac.Item, asset: pystac.Asset, profile: Profile, baseline: str | None, band: str
) -> tuple[float, float]:
    raster = _raster_band(asset)
    raster_scale = raster.get("scale")
    raster_offset = raster.get("offset")
    for source in profile.scale_offset:
        if source == "boa_flag":
            flag = item.properties.get("earthsearch:boa_offset_applied")
            if isinstance(flag, bool):
                # Element84 sentinel-2-l2a: true means the +1000 DN offset is in the pixels and must be
                # removed (offset -0.1); false means none. It wins over raster:bands, which is known to
                # disagree with the pixels on some items (Element84/earth-search#66, #71).
                offset = S2_OFFSET_0400 if flag else 0.0
                if raster_offset is not None and float(raster_offset) != offset:
                    log.debug(
                        "item %s band %s: raster:bands offset %s disagrees with "
                        "earthsearch:boa_offset_applied=%s; using %s",
                        item.id, band, raster_offset, flag, offset,
                    )
                return float(raster_scale) if raster_scale is not None else S2_SCALE, offset
        elif source == "raster":
            if raster_scale is not None or raster_offset is not None:
                return (
                    float(raster_scale) if raster_scale is not None else 1.0,
                    float(raster_offset) if raster_offset is not None else 0.0,
                )
        elif source == "baseline":
            bt = _baseline_tuple(baseline)
            if bt is None:
                dt = item_interval(item)[0]
                has_offset = dt is not None and dt >= BASELINE_0400_SINCE
                log.warning(
                    "item %s: processing baseline unknown; assuming %s from its sensing date",
                    item.id, ">= 04.00 (offset -0.1)" if has_offset else "< 04.00 (offset 0)",
                )
            else:
                has_offset = bt >= BASELINE_OFFSET_FROM
            return S2_SCALE, S2_OFFSET_0400 if has_offset else 0.0
    return S2_SCALE, 0.0


def _crs_of(fields: Mapping[str, Any]) -> str | None:
    epsg = fields.get("proj:epsg")
    if isinstance(epsg, int | float) and not isinstance(epsg, bool):
        return f"EPSG:{int(epsg)}"
    code = fields.get("proj:code")
    if isinstance(code, str) and code:
        return code
    wkt = fields.get("proj:wkt2")
    if isinstance(wkt, str) and wkt:
        return wkt
    return None


def _bounds_of(fields: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """Bounds (left, bottom, right, top) in metres from proj:transform + proj:shape, else proj:bbox."""
    transform = fields.get("proj:transform")
    shape = fields.get("proj:shape")
    if isinstance(transform, Sequence) and len(transform) >= 6 and isinstance(shape, Sequence) and len(shape) == 2:
        a, b, c, d, e, f = (float(v) for v in transform[:6])
        if b == 0 and d == 0:
            height, width = int(shape[0]), int(shape[1])
            x0, x1 = c, c + a * width
            y0, y1 = f, f + e * height
            return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)
    bbox = fields.get("proj:bbox")
    if isinstance(bbox, Sequence) and len(bbox) == 4:
        left, bottom, right, top = (float(v) for v in bbox)
        return left, bottom, right, top
    return None


def _resolution_of(asset: pystac.Asset, band: str) -> float | None:
    raster = _raster_band(asset)
    for value in (raster.get("spatial_resolution"), asset.extra_fields.get("gsd")):
        if isinstance(value, int | float) and value > 0:
            return float(value)
    transform = asset.extra_fields.get("proj:transform")
    if isinstance(transform, Sequence) and len(transform) >= 6:
        return abs(float(transform[0]))
    return _table().native_resolution.get(band)


def _href_of(asset: pystac.Asset, profile: Profile) -> str:
    return sign_href(asset.get_absolute_href() or asset.href, profile.sign)


def scene_spec(item: pystac.Item | Mapping[str, Any], profile: str | Profile | None = None) -> SceneSpec:
    """Map a STAC item to a :class:`SceneSpec` with the given profile (name or alias), or the detected one.

    Bands with no asset in the item are simply absent (the model's band check names them later);
    an item with none of the profile's band assets, or without CRS or tile grid, raises
    :class:`ItemLayoutError` naming what is missing.
    """
    if not isinstance(item, pystac.Item):
        item = pystac.Item.from_dict(dict(item), preserve_dict=True, migrate=False)
    prof = get_profile(profile) if isinstance(profile, str) else profile
    prof = prof if prof is not None else detect_profile(item)

    baseline = processing_baseline(item)
    bands: dict[str, BandAsset] = {}
    for band in BANDS:
        key = prof.asset_key(item, band)
        if key is None:
            continue
        asset = item.assets[key]
        raster = _raster_band(asset)
        nodata_raw = raster.get("nodata", 0)
        nodata = float(nodata_raw) if isinstance(nodata_raw, int | float) else None
        if band in CLASS_BANDS:
            scale, offset = 1.0, 0.0
        else:
            scale, offset = _scale_offset(item, asset, prof, baseline, band)
        bands[band] = BandAsset(
            band=band,
            href=_href_of(asset, prof),
            scale=scale,
            offset=offset,
            nodata=nodata,
            resolution=_resolution_of(asset, band),
        )
    if not any(b not in CLASS_BANDS for b in bands):
        wanted = ", ".join(f"{b} ({'/'.join(keys)})" for b, keys in prof.assets.items() if b not in CLASS_BANDS)
        raise ItemLayoutError(
            f"item {item.id} has none of the band assets of profile {prof.name}: missing {wanted}; "
            f"it has assets: {', '.join(sorted(item.assets)) or 'none'}. Choose another --profile."
        )

    crs, bounds = _grid(item, prof)
    props = dict(item.properties)
    props[BASELINE_KEY] = baseline
    dt = item_interval(item)[0]
    return SceneSpec(
        id=item.id,
        bands=bands,
        crs=crs,
        bounds=bounds,
        product_level=product_level(item, prof),
        datetime=dt,
        collection=item.collection_id,
        profile=prof.name,
        properties=props,
        gdal_env=dict(prof.gdal_env),
        item=item,
    )


def _grid(item: pystac.Item, prof: Profile) -> tuple[str, tuple[float, float, float, float]]:
    """CRS and tile bounds: from the 10 m band assets, else item-level proj fields, else any band."""
    candidates: list[Mapping[str, Any]] = []
    for band in _GRID_BANDS:
        key = prof.asset_key(item, band)
        if key is not None:
            candidates.append(item.assets[key].extra_fields)
    candidates.append(item.properties)
    for band in BANDS:
        key = prof.asset_key(item, band)
        if key is not None and band not in _GRID_BANDS:
            candidates.append(item.assets[key].extra_fields)
    bounds = next((b for b in (_bounds_of(c) for c in candidates) if b is not None), None)
    crs = _crs_of(item.properties) or next((c for c in (_crs_of(f) for f in candidates) if c), None)
    missing = [name for name, v in (("proj:epsg/proj:code", crs), ("proj:transform+proj:shape", bounds)) if v is None]
    if missing:
        raise ItemLayoutError(
            f"item {item.id} lacks {' and '.join(missing)} (projection extension) on its 10 m assets and "
            "on the item, so its tile grid is unknown; use a catalogue that publishes the projection extension"
        )
    assert crs is not None and bounds is not None
    return crs, bounds
