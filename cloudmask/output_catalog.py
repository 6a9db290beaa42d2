"""The output STAC catalogue: one item per mask, in a collection whose extents follow its items.

Items are written as ``OUT/items/<id>.json`` (atomically) and the catalogue ``OUT/catalog.json`` /
``OUT/collection.json`` is rebuilt from them, so the files on disk are the state and a crashed run
never leaves a catalogue that points at a missing mask.

Items are made for other clients: ``proj:code`` and ``proj:epsg`` (stackstac reads only the latter),
classification v2 ``classification:classes`` on the mask asset with ``count`` and ``percentage`` per
class (classes of the valid pixels, nodata of all pixels), ``eo:cloud_cover`` (cloud and thin cloud of
the valid pixels; left out, and said so in ``description``, when the scene has no valid pixel), and
a ``derived_from`` link that travels: the source item's own URL, or a relative path to a local one,
never an absolute local path. The collection carries ``item_assets`` and a licence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pystac
import rasterio
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension, Sampling

from . import __version__, atomic
from .classes import NODATA, THREE_CLASSES, ClassShares, ClassTable, histogram
from .layout import OutputPaths
from .models import ModelCard
from .scene import SceneSpec

if TYPE_CHECKING:
    from .pipeline import MaskResult

log = logging.getLogger(__name__)

COLLECTION_ID = "cloudmask"
# The extension fields are set with pystac's own helpers (projection, raster, file, classification, eo),
# so the schema versions are the ones pystac knows. Two exceptions, written by hand: processing (pystac
# has no helper for it) and, in the written file only, projection v1.2.0 instead of pystac's v2.0.0:
# the version that allows proj:code and (deprecated, but all stackstac 0.5 reads) proj:epsg together.
PROJECTION_EXT = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
RASTER_EXT = RasterExtension.get_schema_uri()
FILE_EXT = FileExtension.get_schema_uri()
CLASSIFICATION_EXT = ClassificationExtension.get_schema_uri()
PROCESSING_EXT = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
EO_EXT = EOExtension.get_schema_uri()
#: Licence of the output masks (SPDX) and where it is written; the masks contain modified Copernicus
#: Sentinel data, whose terms ask for that attribution and allow this licence.
LICENSE = "CC-BY-4.0"
LICENSE_URL = "https://creativecommons.org/licenses/by/4.0/"
ATTRIBUTION = "Contains modified Copernicus Sentinel data, processed by cloudmask"
NO_VALID_PIXELS = ("The scene has no valid pixel on the mask's grid: eo:cloud_cover is left out "
                   "(not 0) and the classes have counts but no percentage.")
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


def _is_url(href: str) -> bool:
    scheme = urlparse(href).scheme
    return len(scheme) > 1 and scheme != "file"  # a Windows drive letter is not a scheme


def _source_href(spec: SceneSpec, items_dir: Path) -> str | None:
    """The href of the source item for ``derived_from``: its own ``canonical`` link when it has one (kept
    as it is, wherever the output folder goes), else its ``self`` URL, else the local file relative to
    ``items_dir`` (where the output item is written); never an absolute path the item does not give."""
    item = spec.item
    if item is None:
        return None
    canonical = next((lk for lk in item.links if lk.rel == "canonical" and lk.href), None)
    if canonical is not None and (_is_url(str(canonical.href)) or Path(str(canonical.href)).is_absolute()):
        return str(canonical.href)  # the item's own statement of where it lives
    href = (canonical.get_absolute_href() if canonical is not None else None) or item.get_self_href()
    if not href:
        return None
    if _is_url(str(href)):
        return str(href)
    local = Path(str(href).removeprefix("file://"))
    return os.path.relpath(local, items_dir.resolve()) if local.is_absolute() else None


def _shares(result: MaskResult) -> ClassShares:
    """Class counts of ``result``: from the pipeline's counts, else counted from the mask COG."""
    if result.counts:
        return result.shares
    hist = np.zeros(256, np.int64)
    with rasterio.open(result.mask) as ds:
        for _, win in ds.block_windows(1):
            hist += histogram(ds.read(1, window=win))
    return result.classes.shares(hist)


def mask_item(spec: SceneSpec, result: MaskResult, card: ModelCard | None = None) -> pystac.Item:
    """A STAC item describing ``result``'s mask COG.

    Carries projection v2 (``proj:code`` and, for clients that read only it, ``proj:epsg``), raster,
    file (checksum, size), classification v2 (the class table with ``count``/``percentage`` per
    class), eo (``eo:cloud_cover`` of valid pixels; left out without valid pixels) and processing
    (software and versions, lineage, datetime) fields, and a portable ``derived_from`` link to the
    source item. ``cloudmask:source_id`` keeps the source id (the item id is its file stem). ``card``
    defaults to the one ``result`` carries.
    """
    with rasterio.open(result.mask) as ds:
        geobox = GeoBox((ds.height, ds.width), ds.transform, str(ds.crs))
        epsg = ds.crs.to_epsg()
        code = f"EPSG:{epsg}" if epsg else None
        bounds = list(ds.bounds)
    paths = OutputPaths.of_mask(result.mask)
    footprint: Geometry = geobox.extent.to_crs("EPSG:4326")
    geom = footprint.json
    dt = spec.datetime or datetime.now(UTC)
    now = datetime.now(UTC).isoformat()
    table: ClassTable = result.classes
    shares = _shares(result)
    backend = result.extra.get("backend")
    software = {"cloudmask": __version__}
    card = card if card is not None else result.card
    model_version = card.version if card is not None else result.extra.get("model_version")
    software[f"model:{result.model}"] = str(model_version or "unversioned")
    if backend:
        software[f"backend:{backend}"] = _backend_version(backend)
    precision = result.extra.get("precision")
    props: dict[str, Any] = {
        "gsd": abs(geobox.resolution.x),
        "cloudmask:model": result.model,
        "cloudmask:classes": table.summary(),
        "cloudmask:valid_pixels": shares.valid,
        "cloudmask:seconds": round(result.seconds, 3),
        "cloudmask:source_id": spec.id,
        "processing:software": software,
        "processing:level": "L3",
        "processing:version": __version__,
        "processing:datetime": now,
        "processing:lineage": f"cloudmask {__version__}, model {result.model}"
        + (f" on {backend}" if backend else "") + (f" ({precision})" if precision else "") + f", from {spec.id}",
        "created": now,
        "updated": now,
    }
    if result.extra.get("recipe"):  # what made the mask (cloudmask.recipe): a changed recipe remasks
        props["cloudmask:recipe"] = result.extra["recipe"]
    if result.extra.get("quicklook_error"):  # the quicklook cannot be made: the scene is done without it
        props["cloudmask:quicklook_error"] = str(result.extra["quicklook_error"])
    if precision:  # what the model ran at: f32, bf16 or int8 (OpenVINO)
        props["cloudmask:precision"] = precision
    post = result.extra.get("postprocess")
    if post:  # recorded as processing: what was done to the model's argmax, with which options
        props["cloudmask:postprocess"] = post
        props["processing:lineage"] += "; post-processing " + ", ".join(f"{k}={v}" for k, v in post.items())
    cover = shares.cloud_cover
    if cover is None:
        props["description"] = NO_VALID_PIXELS
    if spec.collection:
        props["cloudmask:source_collection"] = spec.collection
    for key in COPIED_PROPERTIES:
        if key in spec.properties and spec.properties[key] is not None:
            props[key] = spec.properties[key]
    item = pystac.Item(
        id=paths.item_id,
        geometry=geom,
        bbox=list(footprint.boundingbox),
        datetime=dt,
        properties=props,
        stac_extensions=[PROCESSING_EXT],
        collection=COLLECTION_ID,
    )
    ProjectionExtension.ext(item, add_if_missing=True).apply(
        code=code, wkt2=str(geobox.crs.to_wkt()) if code is None and geobox.crs is not None else None,
        bbox=bounds, shape=[geobox.height, geobox.width], transform=list(geobox.transform)[:6],
    )
    eo = EOExtension.ext(item, add_if_missing=True)
    if cover is not None:
        eo.cloud_cover = round(cover, 3)
        snow = shares.percentages.get("snow")
        if snow is not None:  # a model with a snow class
            eo.snow_cover = round(snow, 3)
    res = abs(geobox.resolution.x)
    mask = _cog_asset(item, "mask", result.mask, "Cloud mask (" + ", ".join(table.names) + ")",
                      ["data", "cloud", "cloud-shadow"],
                      [RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, spatial_resolution=res,
                                         sampling=Sampling.AREA)])
    ClassificationExtension.ext(mask, add_if_missing=True).classes = classifications(table, shares)
    if result.probabilities is not None and result.probabilities.exists():
        _cog_asset(item, "probabilities", result.probabilities,
                   "Class probabilities, percent (bands: " + ", ".join(table.names) + ")", ["data"],
                   [_probability_band(res, name) for name in table.names])
    if paths.quicklook.exists():
        item.add_asset("quicklook", pystac.Asset(href=paths.quicklook.name, media_type=pystac.MediaType.PNG,
                                                 title="True colour beside true colour with the mask",
                                                 roles=["overview"]))
    if paths.thumbnail.exists():
        item.add_asset("thumbnail", pystac.Asset(href=paths.thumbnail.name, media_type=pystac.MediaType.PNG,
                                                 title="True colour with the mask, small", roles=["thumbnail"]))
    src = _source_href(spec, paths.item.parent)
    if src:
        item.add_link(pystac.Link("derived_from", src, media_type=pystac.MediaType.GEOJSON,
                                  title=f"source item {spec.id}"))
    return item


def classifications(table: ClassTable, shares: ClassShares | None = None) -> list[Classification]:
    """The classification v2 classes of ``table`` (pystac objects), with ``count``/``percentage`` from ``shares``."""
    return [Classification.create(**d) for d in table.stac_classes(shares)]


def _probability_band(res: float | None, name: str) -> RasterBand:
    band = RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, unit="percent", spatial_resolution=res)
    band.properties["description"] = f"probability of {name}"  # raster v1.1 has no description setter
    return band


def _cog_asset(item: pystac.Item, key: str, path: Path, title: str, roles: list[str],
               bands: list[RasterBand]) -> pystac.Asset:
    """Add a COG asset (href: the file name) with its file checksum and size and its raster bands."""
    asset = pystac.Asset(href=path.name, media_type=pystac.MediaType.COG, title=title, roles=roles)
    item.add_asset(key, asset)
    FileExtension.ext(asset, add_if_missing=True).apply(checksum=file_checksum(path), size=path.stat().st_size)
    RasterExtension.ext(asset, add_if_missing=True).apply(bands=bands)
    return asset


def item_percentages(item: pystac.Item | dict[str, Any]) -> dict[str, float | None]:
    """``{class name: percentage}`` of an output item's mask (classes of valid pixels, ``nodata`` of all)."""
    doc = item.to_dict(include_self_link=False, transform_hrefs=False) if isinstance(item, pystac.Item) else item
    classes = doc.get("assets", {}).get("mask", {}).get("classification:classes", [])
    return {c["name"]: c.get("percentage") for c in classes}


def _keep_epsg(doc: dict[str, Any]) -> None:
    """Put back ``proj:epsg`` beside an ``EPSG:`` ``proj:code`` and the projection version that allows
    both (pystac drops ``proj:epsg`` and moves the extension to v2.0.0 when it reads an item)."""
    props = doc["properties"]
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
        props.setdefault("proj:epsg", int(code[5:]))
    doc["stac_extensions"] = [PROJECTION_EXT if "/projection/" in u else u for u in doc.get("stac_extensions", [])]


def write_item(out_dir: Path, item: pystac.Item) -> Path:
    """Write ``item`` as ``out_dir/items/<id>.json`` atomically (asset hrefs relative to ``out_dir``)."""
    path = Path(out_dir) / "items" / f"{item.id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = item.to_dict(include_self_link=False, transform_hrefs=False)
    _keep_epsg(doc)
    for asset in doc["assets"].values():
        if not asset["href"].startswith(("/", "http", "s3:", "../")):
            asset["href"] = "../" + asset["href"]
    return atomic.write_text(path, json.dumps(doc, indent=1))


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
    table = _collection_table(items)
    coll = pystac.Collection(
        id=COLLECTION_ID,
        description=f"Cloud masks made by cloudmask ({table.summary()}). {ATTRIBUTION}.",
        extent=extent,
        title=title,
        license=LICENSE,
        providers=[pystac.Provider("cloudmask", roles=[pystac.ProviderRole.PROCESSOR]),
                   pystac.Provider("Copernicus Sentinel data", roles=[pystac.ProviderRole.LICENSOR])],
    )
    ClassificationExtension.summaries(coll, add_if_missing=True).classes = classifications(table)
    coll.item_assets = _item_assets(coll, table)  # STAC 1.1 core (pystac's ItemAssetsExtension is deprecated)
    if items:
        _summaries(coll, items)
    cat = pystac.Catalog(id="cloudmask-output", description=title)
    cat.add_child(coll)
    doc_coll = coll.to_dict(include_self_link=False, transform_hrefs=False)
    doc_coll["links"] = [
        {"rel": "root", "href": "./catalog.json", "type": "application/json"},
        {"rel": "parent", "href": "./catalog.json", "type": "application/json"},
        {"rel": "license", "href": LICENSE_URL, "type": "text/html", "title": LICENSE},
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
            atomic.write_text(path, json.dumps(doc, indent=1))
    for name, doc in (("collection.json", doc_coll), ("catalog.json", doc_cat)):
        atomic.write_text(out_dir / name, json.dumps(doc, indent=1))
    return out_dir / "catalog.json"


def _collection_table(items: list[pystac.Item]) -> ClassTable:
    """The widest class table of the items (three classes when there are none)."""
    table = THREE_CLASSES
    for it in items:
        summary = it.properties.get("cloudmask:classes")
        if isinstance(summary, str):
            try:
                other = ClassTable.from_summary(summary)
            except ValueError:
                continue
            if len(other) > len(table):
                table = other
    return table


def _item_assets(coll: pystac.Collection, table: ClassTable) -> dict[str, pystac.ItemAssetDefinition | dict[str, Any]]:
    """``item_assets``: what every item's assets are (STAC 1.1 core), raster and classification fields
    set with pystac's extension helpers."""
    mask = pystac.ItemAssetDefinition.create(title="Cloud mask", description=None, media_type=pystac.MediaType.COG,
                                             roles=["data", "cloud", "cloud-shadow"])
    mask.set_owner(coll)  # the extensions are declared on the collection
    RasterExtension.ext(mask, add_if_missing=True).bands = [
        RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, sampling=Sampling.AREA)]
    ClassificationExtension.ext(mask, add_if_missing=True).classes = classifications(table)
    probs = pystac.ItemAssetDefinition.create(title="Class probabilities, percent", description=None,
                                              media_type=pystac.MediaType.COG, roles=["data"])
    probs.set_owner(coll)
    RasterExtension.ext(probs, add_if_missing=True).bands = [
        RasterBand.create(nodata=NODATA, data_type=DataType.UINT8, unit="percent") for _ in range(len(table))]
    return {
        "mask": mask,
        "probabilities": probs,
        "quicklook": pystac.ItemAssetDefinition.create(
            title="True colour beside true colour with the mask", description=None,
            media_type=pystac.MediaType.PNG, roles=["overview"]),
        "thumbnail": pystac.ItemAssetDefinition.create(
            title="True colour with the mask, small", description=None, media_type=pystac.MediaType.PNG,
            roles=["thumbnail"]),
    }


def _summaries(coll: pystac.Collection, items: list[pystac.Item]) -> None:
    """Collection summaries of the items (pystac's summary helpers): CRS codes, models, cloud-cover range."""
    codes = sorted({str(code) for it in items if (code := ProjectionExtension.ext(it).code)})
    models = sorted({str(it.properties["cloudmask:model"]) for it in items if it.properties.get("cloudmask:model")})
    clouds = [float(c) for it in items if (c := EOExtension.ext(it).cloud_cover) is not None]
    if codes:
        ProjectionExtension.summaries(coll, add_if_missing=True).code = codes
    if models:
        coll.summaries.add("cloudmask:model", models)
    if clouds:
        EOExtension.summaries(coll, add_if_missing=True).cloud_cover = pystac.RangeSummary(min(clouds), max(clouds))


def _backend_version(backend: str) -> str:
    """The installed version of ``backend``'s package ("" if unknown)."""
    from importlib import metadata

    try:
        return metadata.version({"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(backend, backend))
    except metadata.PackageNotFoundError:
        return ""
