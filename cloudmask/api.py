"""The notebook API: search a catalogue, open a scene as xarray, mask it, look at it.

::

    import cloudmask
    items = cloudmask.search("path/to/catalog.json", max_cloud=60)
    ds = cloudmask.open_scene(items[0])            # lazy (dask) reflectance, one variable per band
    mask = cloudmask.predict(ds)                    # uint8 DataArray on the same grid
    result = cloudmask.mask_scene(items[0], out="masks/")   # COG + quicklook + STAC item, as the CLI does

Reflectance is unitless (0–1) with NaN for nodata; coordinates are pixel centres in the scene's
projected CRS (metres); ``ds.odc.geobox`` and ``ds.rio.crs``/``ds.rio.transform()`` give the grid.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
import rioxarray
import xarray as xr
from odc.geo.geom import Geometry
from odc.geo.xr import xr_coords

from .classes import THREE_CLASSES, ClassTable
from .engine import StreamConfig
from .errors import ConfigError
from .models import ModelCard, choose_model
from .options import MaskOptions
from .output_catalog import mask_item, update_output_catalog, write_item
from .pipeline import MaskResult, mask_scene_spec
from .profiles import scene_spec
from .quicklook import quicklook_or_note
from .reader import RasterSource, ReaderConfig
from .scene import SceneSpec
from .stac import search as _search

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

    from .writer import CogConfig

log = logging.getLogger(__name__)

#: Rows per dask chunk of :func:`open_scene` (about 4 MB per band at 1024 columns).
DEFAULT_ROW_CHUNK = 1024

ItemLike = Any  # pystac.Item | SceneSpec | str | Path (an item JSON file)


def search(
    stac: str | Path,
    *,
    collection: str | Sequence[str] | None = None,
    bbox: Sequence[float] | None = None,
    aoi: Any = None,
    datetime: Any = None,
    max_cloud: float | None = None,
    min_cloud: float | None = None,
    limit: int | None = None,
    sortby: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> list[pystac.Item]:
    """Sentinel-2 items of a STAC API URL, a named endpoint or a static catalogue that pass the filters.

    ``bbox`` is ``(west, south, east, north)`` in degrees; ``aoi`` a shapely geometry (lon/lat), a
    GeoJSON dict/path or WKT; ``datetime`` an RFC 3339 instant or interval; cloud limits in percent.
    A thin wrapper over :func:`cloudmask.stac.search` (other keywords go through).
    """
    return _search(
        stac, collection=collection, bbox=bbox, aoi=aoi, datetime=datetime, max_cloud=max_cloud,
        min_cloud=min_cloud, limit=limit, sortby=sortby, **kwargs,
    )


def scene_of(item: ItemLike, profile: str | None = None) -> SceneSpec:
    """A :class:`SceneSpec` from a pystac Item, an item JSON path/URL, or a SceneSpec (returned as is)."""
    if isinstance(item, SceneSpec):
        return item


    if isinstance(item, str | Path):
        item = pystac.Item.from_file(str(item))
    if not isinstance(item, pystac.Item):
        raise TypeError(f"expected a pystac.Item, an item JSON path or a SceneSpec, got {type(item).__name__}")
    return scene_spec(item, profile)


class _SharedSource(RasterSource):
    """A :class:`RasterSource` that pickles (for ``dask.distributed``) and is shared within a process.

    Pickling sends only what the scene is (spec without its pystac item, bands, grid, reader config);
    on the other side a per-process registry returns one source per scene, so every task of a worker
    reuses the same (per-thread) GDAL handles instead of opening the files again.
    """

    _registry: weakref.WeakValueDictionary[str, _SharedSource] = weakref.WeakValueDictionary()

    def __init__(self, spec: SceneSpec, bands: Sequence[str], geobox: GeoBox,
                 config: ReaderConfig | None = None, key: str | None = None) -> None:
        super().__init__(spec, bands, geobox, config)
        self.key = key or self._name
        self._name = f"cloudmask-read-{self.key}"
        weakref.finalize(self, self._handles.close)
        self._registry[self.key] = self

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        spec = replace(self.spec, item=None)
        return _shared_source, (self.key, spec, self.bands, self.geobox, self.config)


def _shared_source(key: str, spec: SceneSpec, bands: Sequence[str], geobox: GeoBox,
                   config: ReaderConfig | None) -> _SharedSource:
    found = _SharedSource._registry.get(key)
    if found is not None:
        return found
    return _SharedSource(spec, bands, geobox, config, key=key)


def open_scene(
    item: ItemLike,
    model: str | Path | ModelCard | None = "auto",
    *,
    resolution: float | None = None,
    bands: Sequence[str] | None = None,
    profile: str | None = None,
    chunks: int = DEFAULT_ROW_CHUNK,
    reader: ReaderConfig | None = None,
    groupby: str | None = None,
    http_timeout: str | float | None = None,
    http_retries: int | None = None,
) -> xr.Dataset:
    """A scene as a lazy (dask) Dataset of reflectance, one float32 ``(y, x)`` variable per band.

    ``item`` may also be a list of items of one tile (one grid): the result then has a ``time``
    dimension (ascending) with an ``id`` coordinate, as odc-stac and stackstac give; with
    ``groupby="solar_day"`` items of the same local solar day (adjacent datatake strips) are merged,
    the first item's valid pixels first.

    * ``model``: whose bands and resolution to use (default ``auto``: ``ukis-6b-<product level>``);
    * ``resolution``: pixel size in metres (default the model's, e.g. 30), on the tile's own grid;
    * ``bands``: STAC common names to load instead of the model's (e.g. ``["red", "green", "blue"]``);
    * ``chunks``: rows per dask chunk (columns are chunked by ``reader.chunk_cols``).

    Values are reflectance (0–1), NaN where the scene has no data (:func:`cloudmask.xarray_predict.valid_mask`).
    ``x``/``y`` are pixel centres in the scene CRS; the ``spatial_ref`` coordinate carries CRS and
    transform (``ds.rio.crs``, ``ds.rio.transform()``, ``ds.odc.geobox``); ``time`` is a scalar
    coordinate, so scenes concatenate into a time series with ``xr.concat(..., dim="time")``.
    Nothing is read until values are needed; reads run on the active dask scheduler.
    ``http_timeout``/``http_retries`` bound each remote read (as :func:`mask_scene`).
    """
    reader = _with_http(reader, http_timeout, http_retries)
    if isinstance(item, list | tuple):
        return _open_stack(item, model, groupby=groupby, resolution=resolution, bands=bands, profile=profile,
                           chunks=chunks, reader=reader)
    if groupby is not None:
        raise ConfigError("groupby applies to a list of items")
    spec = scene_of(item, profile)
    card = choose_model(model, spec)
    res = float(resolution or card.resolution)
    names = tuple(bands) if bands is not None else card.bands
    geobox = spec.geobox(res)
    key = f"{spec.id}-{res:g}-{'-'.join(names)}-{id(spec):x}-{np.random.default_rng().integers(1 << 62):x}"
    source = _SharedSource(spec, names, geobox, reader, key=key)
    source.check_size()  # a hostile proj:shape would build a task graph of millions of chunks
    h = geobox.height
    if chunks < 1:
        raise ValueError(f"chunks must be a positive number of rows, got {chunks}")
    stack = source.to_dask(row_edges=[*range(0, h, chunks), h])
    coords = xr_coords(geobox, crs_coord_name="spatial_ref")
    if spec.datetime is not None:
        when = spec.datetime.astimezone(UTC).replace(tzinfo=None) if spec.datetime.tzinfo else spec.datetime
        coords["time"] = xr.DataArray(np.datetime64(when, "ns"), attrs={"long_name": "sensing time (UTC)"})
    data_vars = {}
    for i, name in enumerate(names):
        asset = spec.bands[name]
        data_vars[name] = xr.DataArray(
            stack[i],
            dims=("y", "x"),
            coords=coords,
            attrs={"units": "1", "long_name": f"{name} reflectance", "nodata": np.nan,
                   "native_resolution": asset.resolution or np.nan},
        )
    attrs = {
        "id": spec.id,
        "product_level": spec.product_level,
        "model": card.name,
        "resolution": res,
        "crs": str(spec.crs),
        "collection": spec.collection or "",
        "profile": spec.profile,
        "nodata": "NaN in every band",
    }
    cloud = spec.properties.get("eo:cloud_cover")
    if isinstance(cloud, int | float):
        attrs["eo:cloud_cover"] = float(cloud)
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    return ds


def solar_day(spec: SceneSpec) -> str:
    """The local solar date (``YYYY-MM-DD``) of ``spec``'s acquisition: UTC shifted by longitude / 15 h."""


    if spec.datetime is None:
        raise ConfigError(f"item {spec.id} has no datetime; it cannot be grouped by solar day")
    geom = getattr(spec.item, "geometry", None)
    lon = Geometry(geom, "EPSG:4326").centroid.coords[0][0] if geom else 0.0
    when = spec.datetime.astimezone(UTC) if spec.datetime.tzinfo else spec.datetime
    return (when + timedelta(hours=lon / 15.0)).date().isoformat()


def _open_stack(items: Sequence[ItemLike], model: str | Path | ModelCard | None, *, groupby: str | None,
                **kwargs: Any) -> xr.Dataset:
    """Several items of one tile as a ``time`` stack (see :func:`open_scene`)."""
    if groupby not in (None, "solar_day"):
        raise ConfigError(f"groupby must be None or 'solar_day', got {groupby!r}")
    specs = [scene_of(it, kwargs.get("profile")) for it in items]
    if not specs:
        raise ConfigError("open_scene got an empty list of items")
    first = specs[0]
    other = [s.id for s in specs if (str(s.crs), s.bounds) != (str(first.crs), first.bounds)]
    if other:
        raise ConfigError(
            f"open_scene stacks items of one tile (grid); {other[:3]} are on another grid than {first.id}: "
            "open them separately, or mosaic across tiles with odc.stac.load"
        )
    card = choose_model(model, first)
    groups: dict[Any, list[SceneSpec]] = {}
    for s in sorted(specs, key=lambda s: (s.datetime is None, s.datetime)):
        key = solar_day(s) if groupby == "solar_day" else s.id
        groups.setdefault(key, []).append(s)
    slices = []
    for members in groups.values():
        parts = [open_scene(s, card, **kwargs) for s in members]
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.combine_first(p.drop_vars("time", errors="ignore"))
        slices.append(merged)
    out = xr.concat(slices, dim="time", coords="different", compat="equals", combine_attrs="drop_conflicts")
    ids = ["+".join(s.id for s in members) for members in groups.values()]
    return out.assign_coords(id=("time", ids)).assign_attrs(model=card.name, items=[s.id for s in specs])


def mask_scene(
    item: ItemLike,
    out: str | Path,
    model: str | Path | ModelCard | None = "auto",
    *,
    profile: str | None = None,
    resolution: float | None = None,
    probabilities: bool = False,
    quicklook: bool = True,
    catalog: bool = True,
    backend: str = "onnxruntime",
    stream: StreamConfig | None = None,
    reader: ReaderConfig | None = None,
    cog: CogConfig | None = None,
    runners: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    classes: str = "all",
    postprocess: Any = None,
    device: Any = None,
    http_timeout: str | float | None = None,
    http_retries: int | None = None,
    precision: str = "auto",
    calibration: str | Path | None = None,
) -> MaskResult:
    """Mask one scene into ``out`` exactly as ``cloudmask run`` does; returns the :class:`MaskResult`.

    Writes ``<id>_cloudmask.tif`` (COG; ``<id>_probabilities.tif`` with ``probabilities``), a quicklook
    PNG (``quicklook``: one that cannot be written raises, one that cannot be drawn from this scene is left
    out with a warning and ``cloudmask:quicklook_error`` in the item), the output STAC item ``items/<id>.json`` and, with ``catalog``, refreshes
    ``catalog.json``/``collection.json`` in ``out``. ``result.extra`` holds the paths of the quicklook,
    item and catalogue. ``runners`` reuses loaded models across calls (or a callable returning them, called
    while the scene's first rows are read). ``classes="cloud-shadow"`` folds
    the model's classes onto the three-class contract (thin cloud -> cloud, snow -> clear).
    ``postprocess``: post-processing options (:mod:`cloudmask.postprocess`: ``threshold``, ``buffer``,
    ``min_region``, ``scl``, ...), recorded in the item's ``cloudmask:postprocess`` and lineage.
    ``device``: a context manager held only while the scene streams (see :mod:`cloudmask.overlap`).
    ``http_timeout`` (``READ`` or ``"CONNECT,READ"`` seconds) and ``http_retries`` bound each remote
    band read (default ``$CLOUDMASK_HTTP_TIMEOUT``/``$CLOUDMASK_HTTP_RETRIES``, else 10,20 s and 3):
    a server that never answers fails the scene with a :class:`~cloudmask.errors.ReadError`.
    ``backend="openvino"`` takes ``precision`` (auto, f32, bf16, int8) and, for int8, ``calibration`` (a
    calibration-set directory; default the real demo chips); ``result.extra["precision"]`` is what ran.
    """
    spec = scene_of(item, profile)
    reader = _with_http(reader, http_timeout, http_retries)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = stream or StreamConfig()
    if probabilities and not cfg.probabilities:
        cfg = replace(cfg, probabilities=True)
    o = MaskOptions.from_api(model=model, backend=backend, stream=cfg, resolution=resolution, quicklook=quicklook,
                             classes=classes, postprocess=postprocess, profile=profile, precision=precision,
                             calibration=calibration)
    card = choose_model(o.model, spec)
    result = mask_scene_spec(
        spec, out_dir, card, runners=runners, backend=o.backend, stream=cfg, reader=reader, cog=cog,
        resolution=o.resolution, progress=progress, classes=o.classes, postprocess=postprocess, device=device,
        precision=o.precision, calibration=o.calibration,
    )
    if o.quicklook:  # a quicklook that cannot be written fails the scene; one that cannot be drawn is noted
        quicklook_or_note(spec, result)
    result.extra["item"] = write_item(out_dir, mask_item(spec, result))
    if catalog:
        result.extra["catalog"] = update_output_catalog(out_dir)
    return result


def _with_http(reader: ReaderConfig | None, timeout: str | float | None, retries: int | None) -> ReaderConfig | None:
    """``reader`` with the HTTP limits ``timeout``/``retries`` (see :class:`~cloudmask.stac.HttpPolicy`)."""
    if timeout is None and retries is None:
        return reader
    from .stac import HttpPolicy

    http = HttpPolicy.from_env().with_overrides(timeout, retries, names=("http_timeout", "http_retries"))
    return replace(reader or ReaderConfig(), http=http)


def open_mask(mask: MaskResult | str | Path, *, chunks: int | dict[str, int] | None = None) -> xr.DataArray:
    """A mask COG (or a :class:`MaskResult`'s) as a ``(y, x)`` uint8 DataArray with CRS and transform.

    Loaded eagerly unless ``chunks`` is given (then dask-backed). Attributes as :func:`cloudmask.predict`.
    """


    path = mask.mask if isinstance(mask, MaskResult) else Path(mask)

    arr = rioxarray.open_rasterio(path, chunks=chunks, mask_and_scale=False)
    if not isinstance(arr, xr.DataArray):
        raise ValueError(f"{path} is not a single-band mask raster")
    da = arr.squeeze("band", drop=True)
    if chunks is None:
        da = da.load()
    da.name = "mask"
    model = da.attrs.get("CLOUDMASK_MODEL", "")
    da.attrs = {
        "long_name": "cloud and cloud-shadow mask",
        **(ClassTable.from_summary(tags) if (tags := da.attrs.get("CLOUDMASK_CLASSES")) else THREE_CLASSES).cf_attrs(),
        "model": model,
        "nodata": 255,
    }
    return da


__all__ = ["MaskResult", "mask_scene", "open_mask", "open_scene", "scene_of", "search"]
