"""xarray in, mask out: :func:`predict_xarray` behind :func:`cloudmask.predict` for DataArrays/Datasets.

Reflectance (unitless, 0–1, NaN = nodata) comes either as a Dataset with one variable per band (named
with STAC common names, as :func:`cloudmask.open_scene` and odc-stac give) or as a DataArray with a
``band`` dimension labelled with common names. Dask-backed input is never loaded whole: the streaming
engine pulls row chunks on demand (through whatever dask scheduler is active, a ``dask.distributed``
Client included), so a 10980 x 10980 scene streams in bounded memory. Nothing here touches asyncio, so
it runs unchanged inside Jupyter's event loop.

The mask comes back on the input's own coordinates: ``x``/``y`` (pixel centres), the ``spatial_ref``
coordinate that carries CRS and transform (rioxarray/odc-geo), and any scalar coordinate such as
``time``; ``mask.rio.to_raster(path)`` writes the same raster the CLI writes.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from .engine import ArraySink, StreamConfig, StreamStats, stream_scene
from .errors import ConfigError, MissingBandError
from .models import CLASSES, NODATA, ModelCard, load_model
from .postprocess import PostProcessSink, for_card
from .runtime import make_runners

log = logging.getLogger(__name__)

#: Names accepted for the row/column dimensions, in order of preference.
_SPATIAL_DIMS: tuple[tuple[str, str], ...] = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))
#: Attributes of every mask DataArray (CF flags; ``nodata`` for rioxarray/odc-geo).
FLAG_VALUES = [*CLASSES]
FLAG_MEANINGS = " ".join(CLASSES.values())


def spatial_dims(obj: xr.DataArray | xr.Dataset) -> tuple[str, str]:
    """The ``(row, column)`` dimension names of ``obj`` (``y``/``x``, ``latitude``/``longitude``, ...)."""
    dims = set(obj.dims)
    for ydim, xdim in _SPATIAL_DIMS:
        if ydim in dims and xdim in dims:
            return ydim, xdim
    raise ConfigError(
        f"cannot find spatial dimensions in {tuple(obj.dims)}: name them y/x (as odc-stac, rioxarray and "
        "cloudmask.open_scene do)"
    )


def valid_mask(data: xr.DataArray | xr.Dataset, bands: Sequence[str] | None = None) -> xr.DataArray:
    """True where every band (of ``bands``, default all) holds a value, i.e. no NaN: cloudmask's nodata rule."""
    if isinstance(data, xr.Dataset):
        names = list(bands) if bands is not None else [str(v) for v in data.data_vars]
        ok = None
        for name in names:
            v = data[name].notnull()
            ok = v if ok is None else ok & v
        if ok is None:
            raise ConfigError("the Dataset has no band variables")
        return ok.rename("valid")
    arr = data.sel(band=list(bands)) if bands is not None else data
    if "band" in arr.dims:
        return arr.notnull().all("band").rename("valid")
    return arr.notnull().rename("valid")


#: The median of valid input above this (or below -1) cannot be reflectance (0-1; bright cloud and snow reach ~1.6).
MAX_REFLECTANCE_MEDIAN = 3.0


def check_reflectance(values: np.ndarray, what: str = "the input") -> bool:
    """Refuse ``values`` whose valid (finite) part cannot be reflectance: a median above
    :data:`MAX_REFLECTANCE_MEDIAN` or below -1 (digital numbers, percent); :class:`ConfigError` with the fix.

    Looks at up to about a million values spread over the array (a strided sample); returns False when
    there was nothing to judge (no finite value), True when the values pass."""
    flat = values.reshape(-1)
    step = max(1, flat.size // 1_000_000)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return False
    median = float(np.median(sample))
    if -1.0 <= median <= MAX_REFLECTANCE_MEDIAN:
        return True
    raise ConfigError(
        f"{what} cannot be reflectance (0–1): its median is {median:.4g} (largest {float(sample.max()):.4g}); "
        "digital numbers? pass them as integers (read as DN * 1e-4), or pass scale= (and offset=), e.g. "
        "scale=1e-4, offset=-0.1 for Sentinel-2 L2A of processing baseline >= 04.00, or convert with "
        "cloudmask.to_reflectance(data, items)"
    )


def to_band_array(data: xr.DataArray | xr.Dataset, card: ModelCard) -> xr.DataArray:
    """The model's bands of ``data`` as one ``(..., band, y, x)`` float32 DataArray in card order (lazy).

    Per-band ``nodata`` attributes (odc-stac, rioxarray) become NaN; integer data (raw DN) is refused,
    since the models want reflectance.
    """
    if isinstance(data, xr.Dataset):
        missing = [b for b in card.bands if b not in data.data_vars]
        if missing:
            have = ", ".join(str(v) for v in data.data_vars) or "none"
            raise MissingBandError(
                f"model '{card.name}' needs band variable(s) {missing}; the Dataset has: {have}. "
                "Name variables with STAC common names (blue, green, red, nir, swir16, ...)"
            )
        parts = [_as_reflectance(data[b], b) for b in card.bands]
        arr = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
        arr = arr.assign_coords(band=list(card.bands))
    elif isinstance(data, xr.DataArray):
        if "band" not in data.dims:
            raise ConfigError(
                f"a DataArray needs a 'band' dimension labelled with STAC common names, got dims {data.dims}; "
                "use ds.to_array('band') on a Dataset of band variables, or pass the Dataset itself"
            )
        if "band" in data.coords and data["band"].dtype.kind in "UO":
            names = [str(b) for b in data["band"].values]
            missing = [b for b in card.bands if b not in names]
            if missing:
                raise MissingBandError(
                    f"model '{card.name}' needs band(s) {missing}; the DataArray's band labels are {names}"
                )
            arr = data.sel(band=list(card.bands))
        elif data.sizes["band"] == card.n_bands:  # unlabelled: the model's order, like a numpy array
            arr = data.assign_coords(band=list(card.bands))
        else:
            raise ConfigError(
                f"the DataArray's band dimension is unlabelled and has {data.sizes['band']} entries but model "
                f"'{card.name}' takes {card.n_bands} ({list(card.bands)}); label it: "
                "da.assign_coords(band=[...common names...])"
            )
        arr = _as_reflectance(arr, "band data")
    else:
        raise ConfigError(f"predict_xarray takes an xarray Dataset or DataArray, got {type(data).__name__}")
    ydim, xdim = spatial_dims(arr)
    extra = [d for d in arr.dims if d not in ("band", ydim, xdim)]
    return arr.transpose(*extra, "band", ydim, xdim)


def _as_reflectance(arr: xr.DataArray, name: Hashable) -> xr.DataArray:
    if arr.dtype.kind in "iub":
        raise ConfigError(
            f"{name} is {arr.dtype} (digital numbers?); cloudmask models take reflectance 0–1 as floats "
            "with NaN for nodata: pass scale= (and offset=) to cloudmask.predict, e.g. scale=1e-4, offset=-0.1 for "
            "baseline >= 04.00 L2A, or convert: ds.where(ds != 0) * 1e-4 - 0.1"
        )
    nodata = arr.attrs.get("nodata", arr.attrs.get("_FillValue", arr.encoding.get("_FillValue")))
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        arr = arr.where(arr != nodata)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr.where(np.isfinite(arr))  # ±inf: no data, never a (clear) value


class XarrayRowSource:
    """A :class:`~cloudmask.engine.PatchSource` over a ``(band, y, x)`` DataArray, numpy- or dask-backed.

    Dask data are computed one row chunk at a time, only when the engine asks for its rows, and each
    chunk is computed once (the engine reads ascending rows); memory stays bounded by a couple of chunks.
    """

    def __init__(self, arr: xr.DataArray) -> None:
        if arr.ndim != 3:
            raise ValueError(f"expected (band, y, x), got dims {arr.dims}")
        self.data = arr.data
        self._lazy = _is_dask(self.data)
        if self._lazy:
            edges = np.concatenate([[0], np.cumsum(self.data.chunks[1])]).astype(int)
            self._edges = edges
        self._cache: dict[int, np.ndarray] = {}
        self._judged = False  # whether the values were seen to be reflectance (check_reflectance)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        rows = self._rows(start, stop)
        if not self._judged:  # the first rows with data: DN or percent are refused before any is masked
            self._judged = check_reflectance(rows)
        return rows

    def _rows(self, start: int, stop: int) -> np.ndarray:
        if not self._lazy:
            return np.array(self.data[:, start:stop], dtype=np.float32, copy=True)

        edges = self._edges
        first = int(np.searchsorted(edges, start, side="right")) - 1
        last = int(np.searchsorted(edges, stop, side="left")) - 1
        # forget chunks that end before ``start``: the engine never goes back
        for k in [k for k in self._cache if edges[k + 1] <= start]:
            del self._cache[k]
        todo = [k for k in range(first, last + 1) if k not in self._cache]
        if todo:
            computed = _compute([self.data[:, edges[k] : edges[k + 1]] for k in todo])
            for k, block in zip(todo, computed, strict=True):
                self._cache[k] = np.asarray(block, dtype=np.float32)
        parts = [self._cache[k] for k in range(first, last + 1)]
        joined = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        lo = start - int(edges[first])
        return np.array(joined[:, lo : lo + (stop - start)], dtype=np.float32, copy=True)


def _compute(arrays: list[Any]) -> list[Any]:
    """Compute dask ``arrays`` on the active scheduler; inside a ``dask.distributed`` task (a lazy
    :func:`predict` running on a worker) through ``worker_client``, so the reads run on the cluster
    without blocking the worker's thread."""
    import dask

    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        return list(dask.compute(*arrays))
    with worker_client() as client:
        return list(client.compute(arrays, sync=True))


def _is_dask(data: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask is a dependency
        return False
    return isinstance(data, da.Array)


def predict_xarray(
    data: xr.DataArray | xr.Dataset,
    card: str | ModelCard = "ukis-6b-l2a",
    *,
    probabilities: bool = False,
    backend: str = "onnxruntime",
    config: StreamConfig | None = None,
    runners: Sequence[Any] | None = None,
    postprocess: Any = None,
) -> xr.DataArray | xr.Dataset:
    """Mask reflectance held in xarray; see the module docstring for what ``data`` may be.

    Returns a uint8 DataArray ``mask`` (0 clear, 1 cloud, 2 shadow, 255 nodata) on the input's
    coordinates; with ``probabilities=True`` a Dataset of ``mask`` and ``probability`` (uint8 percent,
    ``class`` dimension). Dimensions other than band/y/x (e.g. ``time``) are masked slice by slice.
    The model's resolution is not enforced: pass data at ``card.resolution`` metres for best results.
    """
    import odc.geo.xr  # noqa: F401 - registers .odc on the result
    import rioxarray  # noqa: F401 - registers .rio on the result

    model = load_model(card)
    cfg = config or StreamConfig()
    if probabilities and not cfg.probabilities:
        cfg = replace(cfg, probabilities=True)
    arr = to_band_array(data, model)
    check_resolution(arr, model)
    if runners is None and _is_dask(arr.data):
        return _predict_lazy(arr, model, backend, cfg, probabilities, postprocess)
    own = runners is None
    if runners is None:
        runners = make_runners(model, backend)
    try:
        return _predict_any(arr, model, runners, cfg, probabilities, postprocess)
    finally:
        if own:
            for r in runners:
                r.close()


def _predict_any(
    arr: xr.DataArray, card: ModelCard, runners: Sequence[Any], cfg: StreamConfig, probabilities: bool,
    postprocess: Any = None,
) -> xr.DataArray | xr.Dataset:
    if arr.ndim > 3:
        dim = arr.dims[0]
        parts = [_predict_any(arr.isel({dim: i}), card, runners, cfg, probabilities, postprocess)
                 for i in range(arr.sizes[dim])]
        return xr.concat(parts, dim=dim, coords="minimal", compat="override", combine_attrs="override")  # type: ignore[call-overload, no-any-return]
    if card.kind == "patch-classifier":
        raise ConfigError(
            f"model '{card.name}' is a patch classifier (one label per {card.patch_size}-px patch): its mask is "
            "not on the DataArray's grid; use predict() on a numpy array or mask_scene() for a COG"
        )
    classes, probs, _ = _predict_one(arr, card, runners, cfg, postprocess)
    mask = _mask_like(arr, classes, card)
    if not probabilities:
        return mask
    assert probs is not None
    return _with_probabilities(arr, mask, probs, card)


def _with_probabilities(arr: xr.DataArray, mask: xr.DataArray, probs: Any, card: ModelCard) -> xr.Dataset:
    ydim, xdim = arr.dims[1], arr.dims[2]
    prob = xr.DataArray(
        probs,
        dims=("class", ydim, xdim),
        coords={**_spatial_coords(arr), "class": list(card.class_table.names)},
        attrs={"units": "percent", "long_name": "class probability", "model": card.name},
        name="probability",
    )
    return xr.Dataset({"mask": mask, "probability": prob}, attrs={"model": card.name})


class _Opaque:
    """Hides a dask-backed DataArray from ``dask.delayed`` (which would compute it whole first)."""

    def __init__(self, arr: xr.DataArray) -> None:
        self.arr = arr


def _predict_task(box: _Opaque, card: ModelCard, backend: str, cfg: StreamConfig,
                  postprocess: Any) -> tuple[np.ndarray, np.ndarray | None]:
    runners = make_runners(card, backend)
    try:
        classes, probs, _ = _predict_one(box.arr, card, runners, cfg, postprocess)
    finally:
        for r in runners:
            r.close()
    return classes, probs


def _predict_lazy(arr: xr.DataArray, card: ModelCard, backend: str, cfg: StreamConfig, probabilities: bool,
                  postprocess: Any) -> xr.DataArray | xr.Dataset:
    """The mask of dask-backed ``arr`` as a lazy DataArray: one dask task per (y, x) slice streams the
    slice through the engine when computed (the result is one chunk per slice; bounded memory)."""
    import dask
    import dask.array as da

    if arr.ndim > 3:
        dim = arr.dims[0]
        parts = [_predict_lazy(arr.isel({dim: i}), card, backend, cfg, probabilities, postprocess)
                 for i in range(arr.sizes[dim])]
        return xr.concat(parts, dim=dim, coords="minimal", compat="override", combine_attrs="override")  # type: ignore[call-overload, no-any-return]
    h, w = int(arr.shape[1]), int(arr.shape[2])
    task = dask.delayed(_predict_task, pure=True)(_Opaque(arr), card, backend, cfg, postprocess)
    classes = da.from_delayed(task[0], shape=(h, w), dtype=np.uint8)
    mask = _mask_like(arr, classes, card)
    if not probabilities:
        return mask
    probs = da.from_delayed(task[1], shape=(len(card.class_table), h, w), dtype=np.uint8)
    return _with_probabilities(arr, mask, probs, card)


def check_resolution(arr: xr.DataArray, card: ModelCard) -> None:
    """Warn when ``arr``'s pixels (metres, projected CRS) are not the size the model was trained at."""
    try:
        geobox = arr.odc.geobox
    except Exception:  # noqa: BLE001 - no usable grid: nothing to compare
        return
    if geobox is None or geobox.crs is None or geobox.crs.geographic:
        return
    res = abs(float(geobox.resolution.x))
    if card.resolution and abs(res - card.resolution) > 0.01 * card.resolution:
        log.warning(
            "the data are at %g m but model %s was trained at %g m; results may be worse: load at %g m "
            "(e.g. open_scene(item, resolution=%g) or odc.stac.load(..., resolution=%g))",
            res, card.name, card.resolution, card.resolution, card.resolution, card.resolution,
        )


def _predict_one(
    arr: xr.DataArray, card: ModelCard, runners: Sequence[Any], cfg: StreamConfig, postprocess: Any = None,
) -> tuple[np.ndarray, np.ndarray | None, StreamStats]:
    source = XarrayRowSource(arr)
    h, w = source.shape
    post = for_card(card, postprocess)
    sink = ArraySink(h, w, probabilities=cfg.probabilities, classes=len(card.class_table))
    target = PostProcessSink(sink, post, h, w) if post.active else sink
    run_cfg = replace(cfg, probabilities=True) if post.needs_probabilities else cfg
    stats = stream_scene(source, card, runners, target, run_cfg)
    return sink.classes, sink.probabilities, stats


def _spatial_coords(arr: xr.DataArray) -> dict[Hashable, Any]:
    """Every coordinate of ``arr`` that does not involve the band dimension (x, y, spatial_ref, time...)."""
    return {k: v for k, v in arr.coords.items() if "band" not in v.dims and k != "band"}


def _mask_like(arr: xr.DataArray, classes: Any, card: ModelCard) -> xr.DataArray:
    ydim, xdim = arr.dims[1], arr.dims[2]
    mask = xr.DataArray(
        classes,
        dims=(ydim, xdim),
        coords=_spatial_coords(arr),
        name="mask",
        attrs={
            "long_name": "cloud and cloud-shadow mask",
            **card.class_table.cf_attrs(),
            "model": card.name,
            "nodata": NODATA,
        },
    )
    # raw class values with 255 marking nodata: rioxarray's ``write_nodata(255, encoded=False)`` convention
    mask.attrs["_FillValue"] = NODATA
    return mask


__all__ = [
    "FLAG_MEANINGS",
    "FLAG_VALUES",
    "XarrayRowSource",
    "check_reflectance",
    "predict_xarray",
    "spatial_dims",
    "to_band_array",
    "valid_mask",
]
