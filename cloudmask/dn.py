"""Digital numbers loaded by other tools (odc-stac, stackstac) into reflectance cloudmask models take.

``reflectance = DN * scale + offset`` per band, from each item's provider profile: the Sentinel-2
processing-baseline 04.00 offset (-0.1 for L2A, from January 2022) included, DN equal to the band's
nodata become NaN, and variables or band labels are renamed from asset keys (``B04``, ``red``) to
STAC common names (``red``), so the result goes straight into :func:`cloudmask.predict`::

    ds = odc.stac.load(items, bands=["blue", "green", "red", "nir"], resolution=10, groupby="solar_day")
    mask = cloudmask.predict(cloudmask.to_reflectance(ds, items), model="ukis-4b-l2a")
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import xarray as xr

from .api import scene_of
from .errors import ConfigError
from .scene import BandAsset, SceneSpec

log = logging.getLogger(__name__)


def _band_lookup(spec: SceneSpec) -> dict[str, BandAsset]:
    """Asset keys, common names and file names of ``spec``'s bands -> the band."""
    out: dict[str, BandAsset] = {}
    by_href = {}
    for band in spec.bands.values():
        out[band.band] = band
        by_href[band.href] = band
        by_href[PurePosixPath(band.href.split("?")[0]).name] = band
    item = spec.item
    if item is not None:
        for key, asset in item.assets.items():
            href = asset.get_absolute_href() or asset.href
            found = by_href.get(href) or by_href.get(PurePosixPath(href.split("?")[0]).name)
            if found is not None:
                out.setdefault(key, found)
    return out


def _transform(spec: SceneSpec, names: Sequence[Hashable]) -> dict[Hashable, BandAsset]:
    lookup = _band_lookup(spec)
    missing = [str(n) for n in names if str(n) not in lookup]
    if missing:
        raise ConfigError(
            f"cannot tell which band of item {spec.id} {missing} are (it has {sorted(lookup)}); load the "
            "bands by STAC common name or asset key"
        )
    return {n: lookup[str(n)] for n in names}


def _apply(da: xr.DataArray, band: BandAsset) -> xr.DataArray:
    """``da`` (DN) as float32 reflectance with NaN for nodata."""
    nodata = band.nodata if band.nodata is not None else da.attrs.get("nodata")
    out = da.astype(np.float32)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        out = out.where(da != nodata)
    out = out * np.float32(band.scale) + np.float32(band.offset)
    attrs = {k: v for k, v in da.attrs.items() if k not in ("nodata", "_FillValue", "scale_factor", "add_offset")}
    return out.assign_attrs(**attrs, units="1", nodata=np.nan, long_name=f"{band.band} reflectance")


def _specs(items: Any, profile: str | None) -> list[SceneSpec]:
    seq = items if isinstance(items, list | tuple) else [items]
    if not seq:
        raise ConfigError("to_reflectance needs the STAC item(s) the data were loaded from")
    return [scene_of(it, profile) for it in seq]


def _same_transform(specs: Sequence[SceneSpec], names: Sequence[Hashable]) -> dict[Hashable, BandAsset] | None:
    """The per-band transform if every item shares it (scale, offset, nodata), else None."""
    first = _transform(specs[0], names)
    for spec in specs[1:]:
        other = _transform(spec, names)
        for n in names:
            a, b = first[n], other[n]
            if (a.scale, a.offset, a.nodata) != (b.scale, b.offset, b.nodata):
                return None
    return first


def to_reflectance(data: xr.Dataset | xr.DataArray, items: Any, *, profile: str | None = None,
                   ) -> xr.Dataset | xr.DataArray:
    """``data`` (DN from odc-stac or stackstac) as reflectance named by STAC common names (lazy).

    ``items`` are the pystac Items (or item JSON paths) the data were loaded from. A Dataset (odc-stac)
    has one variable per band; a DataArray (stackstac) a ``band`` dimension labelled with asset keys.
    When the items' transforms differ (a time stack across the baseline-04.00 change) the data must
    carry each slice's item id (stackstac's ``id`` coordinate) so every slice gets its own.
    """
    specs = _specs(items, profile)
    if isinstance(data, xr.Dataset):
        names: list[Hashable] = list(data.data_vars)
        common = _same_transform(specs, names)
        if common is None:
            return _per_item(data, specs)
        return xr.Dataset({common[n].band: _apply(data[n], common[n]) for n in names},
                          coords=data.coords, attrs=data.attrs)
    if isinstance(data, xr.DataArray):
        if "band" not in data.dims:
            raise ConfigError(f"a DataArray needs a 'band' dimension (stackstac's), got dims {data.dims}")
        names = [str(b) for b in data["band"].values]
        common = _same_transform(specs, names)
        if common is None:
            return _per_item(data, specs)
        parts = [_apply(data.sel(band=n), common[n]) for n in names]
        out = xr.concat(parts, dim="band", coords="minimal", compat="override", join="override")
        return out.assign_coords(band=[common[n].band for n in names]).transpose(*data.dims)
    raise ConfigError(f"to_reflectance takes an xarray Dataset or DataArray, got {type(data).__name__}")


def _per_item(data: xr.Dataset | xr.DataArray, specs: Sequence[SceneSpec]) -> xr.Dataset | xr.DataArray:
    if "time" not in data.dims or "id" not in data.coords:
        raise ConfigError(
            "the items scale their bands differently (e.g. across the processing-baseline 04.00 change) and "
            "the data do not say which slice is which item: load with stackstac (it keeps an 'id' "
            "coordinate) or convert one item at a time"
        )
    by_id = {s.id: s for s in specs}
    slices = []
    for i in range(data.sizes["time"]):
        one = data.isel(time=i)
        sid = str(one["id"].values)
        if sid not in by_id:
            raise ConfigError(f"slice {i} is item {sid!r}, which is not among the items given")
        slices.append(to_reflectance(one, [by_id[sid]]))
    return xr.concat(slices, dim="time", coords="minimal", compat="override", join="override")  # type: ignore[call-overload, no-any-return]


__all__ = ["to_reflectance"]
