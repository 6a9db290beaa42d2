"""The output STAC catalogue: one item per mask, in a collection whose extents follow its items.

Items are written as ``OUT/items/<id>.json`` (atomically) and the catalogue ``OUT/catalog.json`` /
``OUT/collection.json`` is rebuilt from them, so the files on disk are the state and a crashed run
never leaves a catalogue that points at a missing mask.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from . import __version__
from .models import CLASSES, NODATA, ModelCard
from .pipeline import MaskResult, mask_paths, safe_name, valid_fractions
from .scene import SceneSpec

log = logging.getLogger(__name__)

COLLECTION_ID = "cloudmask"
PROJECTION_EXT = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_EXT = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE_EXT = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
CLASSIFICATION_EXT = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EO_EXT = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
EXTENSIONS = [PROJECTION_EXT, RASTER_EXT, FILE_EXT, CLASSIFICATION_EXT, PROCESSING_EXT, EO_EXT]
CLASS_TABLE = [
    {"value": 0, "name": "clear", "title": "Clear", "description": "clear land or water", "color_hint": "228B22"},
    {"value": 1, "name": "cloud", "title": "Cloud", "description": "thick or thin cloud", "color_hint": "FFFFFF"},
    {"value": 2, "name": "shadow", "title": "Cloud shadow", "description": "cloud shadow", "color_hint": "282878"},
    {"value": NODATA, "name": "nodata", "title": "No data", "description": "no valid input", "nodata": True},
]
#: Source item properties copied onto the mask item when present.
COPIED_PROPERTIES = ("platform", "constellation", "instruments", "mgrs:utm_zone", "mgrs:latitude_band",
                     "mgrs:grid_square", "s2:mgrs_tile", "grid:code")


def file_checksum(path: Path) -> str:
    """Multihash (sha2-256, hex) of a file, as the STAC file extension wants."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "1220" + h.hexdigest()


def _source_href(spec: SceneSpec) -> str | None:
    item = spec.item
    if item is None:
        return None
    self_href = item.get_self_href()
    if self_href:
        return str(self_href)
    for link in item.links:
        if link.rel in ("self", "canonical"):
            return str(link.href)
    return None


def mask_item(spec: SceneSpec, result: MaskResult, card: ModelCard | None = None) -> pystac.Item:
    """A STAC item describing ``result``'s mask COG.

    Carries projection v2 (``proj:code``; pystac drops the deprecated ``proj:epsg``), raster, file (checksum,
    size), classification (class table), eo (``eo:cloud_cover`` of valid pixels) and processing
    (software and versions, lineage, datetime) fields, the class percentages, and a ``derived_from``
    link to the source item. ``cloudmask:source_id`` keeps the source id (the item id is sanitised).
    """
    with rasterio.open(result.mask) as ds:
        geobox = GeoBox((ds.height, ds.width), ds.transform, str(ds.crs))
        epsg = ds.crs.to_epsg()
        code = f"EPSG:{epsg}" if epsg else None
        bounds = list(ds.bounds)
    footprint: Geometry = geobox.extent.to_crs("EPSG:4326")
    geom = footprint.json
    dt = spec.datetime or datetime.now(UTC)
    now = datetime.now(UTC).isoformat()
    frac = valid_fractions(result.fractions)
    backend = result.extra.get("backend")
    software = {"cloudmask": __version__}
    model_version = card.version if card is not None else result.extra.get("model_version")
    software[f"model:{result.model}"] = str(model_version or "unversioned")
    if backend:
        software[f"backend:{backend}"] = str(result.extra.get("backend_version") or "")
    props: dict[str, Any] = {
        "proj:code": code,
        "proj:shape": [geobox.height, geobox.width],
        "proj:transform": list(geobox.transform)[:6],
        "proj:bbox": bounds,
        "gsd": abs(geobox.resolution.x),
        "eo:cloud_cover": round(frac["cloud"], 3),
        "cloudmask:shadow_cover": round(frac["shadow"], 3),
        "cloudmask:clear_cover": round(frac["clear"], 3),
        "cloudmask:nodata_percentage": round(result.fractions["nodata"], 3),
        "cloudmask:model": result.model,
        "cloudmask:seconds": round(result.seconds, 3),
        "cloudmask:source_id": spec.id,
        "processing:software": software,
        "processing:level": "L3",
        "processing:version": __version__,
        "processing:datetime": now,
        "processing:lineage": f"cloudmask {__version__}, model {result.model}"
        + (f" on {backend}" if backend else "") + f", from {spec.id}",
        "created": now,
        "updated": now,
    }
    if code is None and geobox.crs is not None:
        props["proj:wkt2"] = str(geobox.crs.to_wkt())
    if spec.collection:
        props["cloudmask:source_collection"] = spec.collection
    for key in COPIED_PROPERTIES:
        if key in spec.properties and spec.properties[key] is not None:
            props[key] = spec.properties[key]
    item = pystac.Item(
        id=safe_name(spec.id),
        geometry=geom,
        bbox=list(footprint.boundingbox),
        datetime=dt,
        properties=props,
        stac_extensions=list(EXTENSIONS),
        collection=COLLECTION_ID,
    )
    res = abs(geobox.resolution.x)
    item.add_asset(
        "mask",
        pystac.Asset(
            href=result.mask.name,
            media_type=pystac.MediaType.COG,
            title="Cloud and cloud-shadow mask",
            roles=["data", "cloud", "cloud-shadow"],
            extra_fields={
                "file:checksum": file_checksum(result.mask),
                "file:size": result.mask.stat().st_size,
                "raster:bands": [{"nodata": NODATA, "data_type": "uint8", "spatial_resolution": res,
                                  "sampling": "area"}],
                "classification:classes": CLASS_TABLE,
            },
        ),
    )
    if result.probabilities is not None and result.probabilities.exists():
        item.add_asset(
            "probabilities",
            pystac.Asset(
                href=result.probabilities.name,
                media_type=pystac.MediaType.COG,
                title="Class probabilities, percent (bands: " + ", ".join(CLASSES.values()) + ")",
                roles=["data"],
                extra_fields={
                    "file:checksum": file_checksum(result.probabilities),
                    "file:size": result.probabilities.stat().st_size,
                    "raster:bands": [{"data_type": "uint8", "unit": "percent", "spatial_resolution": res}]
                    * len(CLASSES),
                },
            ),
        )
    quicklook = mask_paths(result.mask.parent, spec.id)["quicklook"]
    if quicklook.exists():
        item.add_asset("quicklook", pystac.Asset(href=quicklook.name, media_type=pystac.MediaType.PNG,
                                                 title="True colour with mask", roles=["overview"]))
    src = _source_href(spec)
    if src:
        item.add_link(pystac.Link("derived_from", src, media_type=pystac.MediaType.GEOJSON,
                                  title=f"source item {spec.id}"))
    return item


def write_item(out_dir: Path, item: pystac.Item) -> Path:
    """Write ``item`` as ``out_dir/items/<id>.json`` atomically (asset hrefs relative to ``out_dir``)."""
    path = Path(out_dir) / "items" / f"{item.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    for asset in doc["assets"].values():
        if not asset["href"].startswith(("/", "http", "s3:", "../")):
            asset["href"] = "../" + asset["href"]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)
    return path


def load_items(out_dir: Path) -> list[pystac.Item]:
    """Items in ``out_dir/items`` whose mask file exists (others are stale and skipped)."""
    items = []
    for p in sorted((Path(out_dir) / "items").glob("*.json")):
        try:
            item = pystac.Item.from_file(str(p))
        except Exception as err:  # noqa: BLE001 - a broken item is skipped and reported
            log.warning("skipping unreadable output item %s: %s", p, err)
            continue
        mask = item.assets.get("mask")
        if mask is None or not (p.parent / mask.href).resolve().exists():
            log.warning("output item %s points at a missing mask; skipped", p)
            continue
        items.append(item)
    return items


def update_output_catalog(out_dir: Path, title: str = "cloudmask masks") -> Path:
    """Rebuild ``out_dir/catalog.json`` + ``collection.json`` from the items on disk; return catalog.json."""
    out_dir = Path(out_dir)
    items = load_items(out_dir)
    if items:
        extent = pystac.Extent.from_items(items)
    else:
        open_interval: list[list[datetime | None]] = [[None, None]]
        extent = pystac.Extent(pystac.SpatialExtent([[-180.0, -90.0, 180.0, 90.0]]),
                               pystac.TemporalExtent(open_interval))
    coll = pystac.Collection(
        id=COLLECTION_ID,
        description="Cloud and cloud-shadow masks made by cloudmask (0 clear, 1 cloud, 2 shadow, 255 nodata).",
        extent=extent,
        title=title,
        license="other",
        stac_extensions=[CLASSIFICATION_EXT],
        providers=[pystac.Provider("cloudmask", roles=[pystac.ProviderRole.PROCESSOR])],
        extra_fields={"summaries": {"classification:classes": CLASS_TABLE}},
    )
    if items:
        coll.extra_fields["summaries"].update(_summaries(items))
    cat = pystac.Catalog(id="cloudmask-output", description=title)
    cat.add_child(coll)
    doc_coll = coll.to_dict(include_self_link=False, transform_hrefs=False)
    doc_coll["links"] = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "./catalog.json", "type": "application/json"},
    ] + [{"rel": "item", "href": f"./items/{it.id}.json", "type": "application/geo+json"} for it in items]
    doc_cat = cat.to_dict(include_self_link=False, transform_hrefs=False)
    doc_cat["links"] = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "child", "href": "./collection.json", "type": "application/json"},
    ]
    for it in items:
        path = out_dir / "items" / f"{it.id}.json"
        doc = json.loads(path.read_text())
        links = [lk for lk in doc.get("links", []) if lk.get("rel") not in ("root", "parent", "collection")]
        links += [
            {"rel": "root", "href": "../catalog.json", "type": "application/json"},
            {"rel": "parent", "href": "../collection.json", "type": "application/json"},
            {"rel": "collection", "href": "../collection.json", "type": "application/json"},
        ]
        if doc.get("links") != links:
            doc["links"] = links
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            os.replace(tmp, path)
    for name, doc in (("collection.json", doc_coll), ("catalog.json", doc_cat)):
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out_dir / name)
    return out_dir / "catalog.json"


def _summaries(items: list[pystac.Item]) -> dict[str, Any]:
    """Collection summaries of the items: CRS codes, models, cloud-cover range."""
    codes = sorted({str(it.properties["proj:code"]) for it in items if it.properties.get("proj:code")})
    models = sorted({str(it.properties["cloudmask:model"]) for it in items if it.properties.get("cloudmask:model")})
    clouds = [float(it.properties["eo:cloud_cover"]) for it in items if it.properties.get("eo:cloud_cover") is not None]
    out: dict[str, Any] = {}
    if codes:
        out["proj:code"] = codes
    if models:
        out["cloudmask:model"] = models
    if clouds:
        out["eo:cloud_cover"] = {"minimum": min(clouds), "maximum": max(clouds)}
    return out
