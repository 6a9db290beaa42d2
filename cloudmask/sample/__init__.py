"""Demo data: the real demo catalogue shipped in the package, and synthetic Sentinel-2 L2A scenes.

* :func:`demo_catalog` -- the five real On Cloud N Sentinel-2 L2A chips (CC BY 4.0) inside the installed
  package (``cloudmask/data/demo``), a static STAC catalogue in the Earth Search ``sentinel-2-l2a`` layout.
* :func:`make_scene` / :func:`make_catalog` -- deterministic synthetic scenes (real COGs) with a
  cloud/shadow truth, for tests and benchmarks (``cloudmask demo --synthetic``). A scene looks like an
  Earth Search v1 ``sentinel-2-c1-l2a`` item: one COG per band at its native resolution (10, 20 or 60 m),
  uint16 DN with the processing-baseline >= 04.00 offset (``reflectance = DN * 1e-4 - 0.1``, nodata 0),
  an SCL layer, plus a ``truth.tif`` mask (0 clear, 1 cloud, 2 shadow, 255 nodata) at 10 m. Same
  arguments give byte-identical pixel data. The physics lives in :mod:`.physics`, COG writing in
  :mod:`.cog`, the STAC items in :mod:`.stac`.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from rasterio.crs import CRS

from .cog import grid_transform, write_cog
from .physics import BANDS, TRUTH_NODATA, Fields, band_dn, scl_map, truth_mask
from .real import DEMO_CHIPS, demo_catalog
from .stac import (
    SAMPLE_VERSION,
    _catalog_is_current,
    build_collection,
    build_item,
    mgrs_for,
    solar_elevation,
    to_lonlat,
)

log = logging.getLogger(__name__)

__all__ = [
    "BANDS",
    "DEFAULT_DATETIME",
    "DEMO_CHIPS",
    "SAMPLE_VERSION",
    "TRUTH_NODATA",
    "default_catalog_dir",
    "demo_catalog",
    "make_catalog",
    "make_scene",
]

#: Default acquisition time of :func:`make_scene` (UTC).
DEFAULT_DATETIME = dt.datetime(2024, 6, 12, 10, 36, 29, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------------------ public API


def make_scene(
    out_dir: Path,
    scene_id: str,
    *,
    size: int = 1200,
    seed: int = 0,
    nodata_wedge: float = 0.0,
    datetime: dt.datetime = DEFAULT_DATETIME,
    origin: tuple[float, float] = (399960.0, 4800000.0),
    epsg: int = 32631,
    sun_azimuth: float = 150.0,
    cloud_cover: float = 0.3,
) -> pystac.Item:
    """Write one synthetic L2A scene to ``out_dir/scene_id/`` and return its STAC item.

    ``size`` is the tile width/height in 10 m pixels (a multiple of 6; 10980 is a full MGRS tile),
    ``origin`` the tile's top-left corner (easting, northing in metres) in UTM ``epsg``,
    ``nodata_wedge`` the fraction (0-1) of the tile without data (a triangle at the left swath edge),
    ``sun_azimuth`` degrees clockwise from north, ``cloud_cover`` the target cloud fraction (0-1).
    The item JSON is saved as ``out_dir/scene_id/scene_id.json`` with relative asset hrefs.
    """
    _check_scene_args(scene_id, size, nodata_wedge, epsg, sun_azimuth, cloud_cover, datetime)
    if datetime.tzinfo is None:
        datetime = datetime.replace(tzinfo=dt.UTC)
    scene_dir = Path(out_dir).resolve() / scene_id
    scene_dir.mkdir(parents=True, exist_ok=True)
    crs = CRS.from_epsg(epsg)
    x0, y0 = float(origin[0]), float(origin[1])
    extent = size * 10.0
    lon_c, lat_c = to_lonlat(crs, [x0 + extent / 2], [y0 - extent / 2])
    sun_elevation = solar_elevation(datetime, lat_c[0], lon_c[0])
    log.info("sample scene %s: %d px at 10 m, seed %d, into %s", scene_id, size, seed, scene_dir)

    fields = Fields.generate(size, seed, sun_azimuth, sun_elevation, cloud_cover)
    hrefs: dict[str, Path] = {}
    for band in BANDS:
        path = scene_dir / f"{band.name}.tif"
        dn = band_dn(fields, band, seed, nodata_wedge)
        write_cog(path, dn, grid_transform(x0, y0, band.resolution), crs, nodata=0, categorical=False)
        hrefs[band.key] = path
        del dn
    scl = scl_map(fields, nodata_wedge)
    scl_counts = np.bincount(scl.ravel(), minlength=16)
    write_cog(scene_dir / "SCL.tif", scl, grid_transform(x0, y0, 20), crs, nodata=0, categorical=True)
    hrefs["scl"] = scene_dir / "SCL.tif"
    del scl
    truth = truth_mask(fields, nodata_wedge)
    truth_counts = np.bincount(truth.ravel(), minlength=256)
    write_cog(scene_dir / "truth.tif", truth, grid_transform(x0, y0, 10), crs, nodata=TRUTH_NODATA,
               categorical=True)
    hrefs["truth"] = scene_dir / "truth.tif"
    del truth, fields

    item = build_item(
        scene_id=scene_id, hrefs=hrefs, size=size, x0=x0, y0=y0, crs=crs, epsg=epsg,
        datetime=datetime, nodata_wedge=nodata_wedge, sun_azimuth=sun_azimuth, sun_elevation=sun_elevation,
        truth_counts=truth_counts, scl_counts=scl_counts, seed=seed, cloud_cover=cloud_cover,
    )
    item.set_self_href(str(scene_dir / f"{scene_id}.json"))
    item.make_asset_hrefs_relative()
    item.save_object(include_self_link=False)
    return item


def make_catalog(
    root: Path,
    n_scenes: int = 3,
    *,
    size: int = 1200,
    seed: int = 0,
    nodata_wedge: Sequence[float] = (0.0, 0.35, 0.0),
    cloud_cover: Sequence[float] = (0.3, 0.5, 0.12),
    collection_id: str = "sentinel-2-c1-l2a",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """A static, self-contained STAC catalogue of ``n_scenes`` synthetic scenes; returns ``catalog.json``.

    The scenes share one tile (origin, CRS) and form a time series five days apart; scene ``i`` uses
    seed ``seed + i`` and ``nodata_wedge[i % len]`` / ``cloud_cover[i % len]`` (fractions 0-1).
    Layout: ``root/catalog.json``, ``root/<collection_id>/collection.json``,
    ``root/<collection_id>/<item id>/{<item id>.json, B??.tif, SCL.tif, truth.tif}``.
    Cheap when ``root`` already holds a catalogue made with the same parameters (kept in the
    catalogue's ``cloudmask:sample`` field); otherwise the old catalogue is replaced. ``progress(done,
    total)`` is called as scenes are made (not when the catalogue is current).
    """
    if not isinstance(n_scenes, int) or n_scenes < 1:
        raise ValueError(f"n_scenes must be a positive integer (e.g. 3), got {n_scenes!r}")
    wedges = [float(w) for w in ([nodata_wedge] if isinstance(nodata_wedge, int | float) else nodata_wedge)]
    covers = [float(c) for c in ([cloud_cover] if isinstance(cloud_cover, int | float) else cloud_cover)]
    if not wedges or not covers:
        raise ValueError("nodata_wedge and cloud_cover need at least one value each, e.g. (0.0, 0.35, 0.0)")
    if not collection_id or "/" in collection_id:
        raise ValueError(f"collection_id must be a plain name like 'sentinel-2-c1-l2a', got {collection_id!r}")
    check_size(size)
    root = Path(root).resolve()  # hrefs are built from it: relative roots would leak into them
    catalog_path = root / "catalog.json"
    params: dict[str, Any] = {
        "version": SAMPLE_VERSION, "n_scenes": n_scenes, "size": size, "seed": seed,
        "nodata_wedge": wedges, "cloud_cover": covers, "collection_id": collection_id,
    }
    if _catalog_is_current(catalog_path, params):
        log.debug("sample catalogue %s is up to date", catalog_path)
        return catalog_path

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        items = []
        if progress is not None:
            progress(0, n_scenes)
        for i in range(n_scenes):
            when = DEFAULT_DATETIME + dt.timedelta(days=5 * i, seconds=7 * i)
            platform = "S2A" if i % 2 else "S2B"
            origin = (399960.0, 4800000.0)
            scene_id = f"{platform}_T{mgrs_for(origin, 32631)[3]}_{when:%Y%m%dT%H%M%S}_L2A"
            items.append(make_scene(
                tmp / collection_id, scene_id, size=size, seed=seed + i,
                nodata_wedge=wedges[i % len(wedges)], datetime=when, origin=origin, epsg=32631,
                sun_azimuth=150.0 - 1.5 * i, cloud_cover=covers[i % len(covers)],
            ))
            if progress is not None:
                progress(i + 1, n_scenes)
        collection = build_collection(collection_id, items)
        catalog = pystac.Catalog(
            id="cloudmask-sample",
            description="Synthetic Sentinel-2 L2A scenes with cloud/shadow truth, made by cloudmask.sample",
            title="cloudmask sample catalogue",
        )
        catalog.extra_fields["cloudmask:sample"] = params
        catalog.add_child(collection)
        catalog.normalize_hrefs(str(tmp))
        catalog.make_all_asset_hrefs_relative()
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        # swap in: remove the old catalogue (only what we own), then move the new one into place
        catalog_path.unlink(missing_ok=True)
        if (root / collection_id).exists():
            shutil.rmtree(root / collection_id)
        (tmp / collection_id).rename(root / collection_id)
        (tmp / "catalog.json").rename(catalog_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("sample catalogue with %d scenes written to %s", n_scenes, catalog_path)
    return catalog_path


def default_catalog_dir() -> Path:
    """Where the demo keeps its sample catalogue: ``$CLOUDMASK_SAMPLE_DIR`` or the user cache dir."""
    env = os.environ.get("CLOUDMASK_SAMPLE_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "cloudmask" / "sample"


# ----------------------------------------------------------------------------------------- validation


def check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 6 or size % 6:
        raise ValueError(
            f"size must be a positive multiple of 6 pixels at 10 m (so the 20 m and 60 m grids align), "
            f"e.g. 600, 1200 or 10980; got {size!r}"
        )


def _check_scene_args(
    scene_id: str, size: int, nodata_wedge: float, epsg: int, sun_azimuth: float, cloud_cover: float,
    when: dt.datetime,
) -> None:
    if not scene_id or any(c in scene_id for c in "/\\") or scene_id in (".", ".."):
        raise ValueError(f"scene_id must be a plain file name like 'S2B_T31TDH_20240612T103629_L2A', "
                         f"got {scene_id!r}")
    check_size(size)
    if not 0.0 <= nodata_wedge < 1.0:
        raise ValueError(f"nodata_wedge must be a fraction in [0, 1) of the tile, e.g. 0.35; got {nodata_wedge!r}")
    if not 0.0 <= cloud_cover <= 1.0:
        raise ValueError(f"cloud_cover must be a fraction in [0, 1], e.g. 0.3; got {cloud_cover!r}")
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise ValueError(f"epsg must be a WGS 84 / UTM code (32601-32660 north, 32701-32760 south); got {epsg!r}")
    if not math.isfinite(sun_azimuth):
        raise ValueError(f"sun_azimuth must be a finite angle in degrees from north; got {sun_azimuth!r}")
    if not isinstance(when, dt.datetime):
        raise ValueError(f"datetime must be a datetime.datetime (UTC), got {type(when).__name__}")
