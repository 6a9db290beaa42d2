"""Deterministic synthetic Sentinel-2 L2A scenes (real COGs) and a static STAC catalogue of them.

Used by the demo, the tests and the benchmarks. A scene looks like an Earth Search v1
``sentinel-2-c1-l2a`` item: one Cloud-Optimized GeoTIFF per band at its native resolution (10, 20 or
60 m), uint16 DN with the processing-baseline >= 04.00 offset (``reflectance = DN * 1e-4 - 0.1``,
nodata 0), an SCL layer, plus a ``truth.tif`` mask (0 clear, 1 cloud, 2 shadow, 255 nodata) at 10 m.

Fields are generated at 20 m (smooth value noise) and resampled to 10 m / 60 m band by band, so a full
10,980 x 10,980 tile stays fast and memory-lean. Same arguments give byte-identical pixel data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

log = logging.getLogger(__name__)

__all__ = [
    "BANDS",
    "DEFAULT_DATETIME",
    "SAMPLE_VERSION",
    "TRUTH_NODATA",
    "default_catalog_dir",
    "make_catalog",
    "make_scene",
]

#: Bump when the generator's output changes: cached catalogues with another version are rebuilt.
SAMPLE_VERSION = 1
#: Default acquisition time of :func:`make_scene` (UTC).
DEFAULT_DATETIME = dt.datetime(2024, 6, 12, 10, 36, 29, tzinfo=dt.UTC)
#: Truth value of pixels without data.
TRUTH_NODATA = 255

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
    "https://stac-extensions.github.io/storage/v1.0.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
]

DN_OFFSET = 1000  # processing baseline >= 04.00: DN = reflectance * 10000 + 1000
VISIBLE_CLOUD = 0.15  # cloud opacity above which a (thin) cloud is "cloud" in the truth
SHADOW_TRUTH = 0.5  # shadow strength above which a pixel is "shadow" in the truth
CLOUD_HEIGHT_M = 1000.0  # cloud-top height used for the shadow displacement, metres


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 band as Earth Search names it."""

    key: str  # asset key (STAC common name, rededge1-3 for B05-B07)
    name: str  # band id / file stem, e.g. B04
    common_name: str  # eo:bands common_name (Earth Search uses "rededge" for B05-B07)
    title: str
    center_wavelength: float  # micrometres
    fwhm: float  # micrometres
    resolution: int  # metres


#: Bands in Earth Search asset order.
BANDS: tuple[Band, ...] = (
    Band("red", "B04", "red", "Red - 10m", 0.665, 0.038, 10),
    Band("green", "B03", "green", "Green - 10m", 0.56, 0.045, 10),
    Band("blue", "B02", "blue", "Blue - 10m", 0.49, 0.098, 10),
    Band("nir", "B08", "nir", "NIR 1 - 10m", 0.842, 0.145, 10),
    Band("swir22", "B12", "swir22", "SWIR 2.2\u03bcm - 20m", 2.19, 0.242, 20),
    Band("rededge2", "B06", "rededge", "Red Edge 2 - 20m", 0.74, 0.018, 20),
    Band("rededge3", "B07", "rededge", "Red Edge 3 - 20m", 0.783, 0.028, 20),
    Band("rededge1", "B05", "rededge", "Red Edge 1 - 20m", 0.704, 0.019, 20),
    Band("swir16", "B11", "swir16", "SWIR 1.6\u03bcm - 20m", 1.61, 0.143, 20),
    Band("nir08", "B8A", "nir08", "NIR 2 - 20m", 0.865, 0.033, 20),
    Band("coastal", "B01", "coastal", "Coastal - 60m", 0.443, 0.027, 60),
    Band("nir09", "B09", "nir09", "NIR 3 - 60m", 0.945, 0.026, 60),
)

# L2A surface reflectance (0-1) per band id of each land cover, and of a thick cloud top.
_SPECTRA: dict[str, dict[str, float]] = {
    #          B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
    "vegetation": dict(zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        (0.025, 0.035, 0.075, 0.040, 0.115, 0.290, 0.360, 0.380, 0.400, 0.390, 0.210, 0.105), strict=True)),
    "soil": dict(zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        (0.070, 0.090, 0.140, 0.190, 0.220, 0.240, 0.260, 0.280, 0.290, 0.295, 0.340, 0.290), strict=True)),
    "water": dict(zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        (0.050, 0.055, 0.050, 0.030, 0.022, 0.016, 0.013, 0.011, 0.010, 0.008, 0.005, 0.004), strict=True)),
    "urban": dict(zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        (0.100, 0.110, 0.125, 0.140, 0.150, 0.160, 0.170, 0.180, 0.185, 0.190, 0.210, 0.190), strict=True)),
    "cloud": dict(zip(
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"),
        (0.780, 0.770, 0.765, 0.760, 0.760, 0.755, 0.750, 0.745, 0.740, 0.700, 0.560, 0.430), strict=True)),
}
_COVERS = ("vegetation", "soil", "water", "urban")


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
    lon_c, lat_c = _to_lonlat(crs, [x0 + extent / 2], [y0 - extent / 2])
    sun_elevation = _sun_elevation(datetime, lat_c[0], lon_c[0])
    log.info("sample scene %s: %d px at 10 m, seed %d, into %s", scene_id, size, seed, scene_dir)

    fields = _Fields.generate(size, seed, sun_azimuth, sun_elevation, cloud_cover)
    hrefs: dict[str, Path] = {}
    for band in BANDS:
        path = scene_dir / f"{band.name}.tif"
        dn = _band_dn(fields, band, seed, nodata_wedge)
        _write_cog(path, dn, _transform(x0, y0, band.resolution), crs, nodata=0, categorical=False)
        hrefs[band.key] = path
        del dn
    scl = _scl(fields, nodata_wedge)
    scl_counts = np.bincount(scl.ravel(), minlength=16)
    _write_cog(scene_dir / "SCL.tif", scl, _transform(x0, y0, 20), crs, nodata=0, categorical=True)
    hrefs["scl"] = scene_dir / "SCL.tif"
    del scl
    truth = _truth(fields, nodata_wedge)
    truth_counts = np.bincount(truth.ravel(), minlength=256)
    _write_cog(scene_dir / "truth.tif", truth, _transform(x0, y0, 10), crs, nodata=TRUTH_NODATA,
               categorical=True)
    hrefs["truth"] = scene_dir / "truth.tif"
    del truth, fields

    item = _build_item(
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
) -> Path:
    """A static, self-contained STAC catalogue of ``n_scenes`` synthetic scenes; returns ``catalog.json``.

    The scenes share one tile (origin, CRS) and form a time series five days apart; scene ``i`` uses
    seed ``seed + i`` and ``nodata_wedge[i % len]`` / ``cloud_cover[i % len]`` (fractions 0-1).
    Layout: ``root/catalog.json``, ``root/<collection_id>/collection.json``,
    ``root/<collection_id>/<item id>/{<item id>.json, B??.tif, SCL.tif, truth.tif}``.
    Cheap when ``root`` already holds a catalogue made with the same parameters (kept in the
    catalogue's ``cloudmask:sample`` field); otherwise the old catalogue is replaced.
    """
    if not isinstance(n_scenes, int) or n_scenes < 1:
        raise ValueError(f"n_scenes must be a positive integer (e.g. 3), got {n_scenes!r}")
    wedges = [float(w) for w in ([nodata_wedge] if isinstance(nodata_wedge, int | float) else nodata_wedge)]
    covers = [float(c) for c in ([cloud_cover] if isinstance(cloud_cover, int | float) else cloud_cover)]
    if not wedges or not covers:
        raise ValueError("nodata_wedge and cloud_cover need at least one value each, e.g. (0.0, 0.35, 0.0)")
    if not collection_id or "/" in collection_id:
        raise ValueError(f"collection_id must be a plain name like 'sentinel-2-c1-l2a', got {collection_id!r}")
    _check_size(size)
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
        for i in range(n_scenes):
            when = DEFAULT_DATETIME + dt.timedelta(days=5 * i, seconds=7 * i)
            platform = "S2A" if i % 2 else "S2B"
            origin = (399960.0, 4800000.0)
            scene_id = f"{platform}_T{_mgrs_for(origin, 32631)[3]}_{when:%Y%m%dT%H%M%S}_L2A"
            items.append(make_scene(
                tmp / collection_id, scene_id, size=size, seed=seed + i,
                nodata_wedge=wedges[i % len(wedges)], datetime=when, origin=origin, epsg=32631,
                sun_azimuth=150.0 - 1.5 * i, cloud_cover=covers[i % len(covers)],
            ))
        collection = _build_collection(collection_id, items)
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


def _check_size(size: int) -> None:
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
    _check_size(size)
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


# ------------------------------------------------------------------------------------------- fields


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent generator per purpose, so fields do not depend on generation order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _lerp_axis(n_out: int, n_in: int, scale: float, shift: float, smooth: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights to sample ``n_out`` points at input positions ``i * scale + shift``."""
    pos = np.arange(n_out, dtype=np.float64) * scale + shift
    pos = np.clip(pos, 0.0, n_in - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (pos - i0).astype(np.float32)
    if smooth:
        w = w * w * (3.0 - 2.0 * w)
    return i0, i1, w


def _resample(a: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
              cols: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Separable linear resampling of a 2-D float32 array (rows first, then columns)."""
    r0, r1, wr = rows
    c0, c1, wc = cols
    t = a[r0] * (1.0 - wr)[:, None]
    t += a[r1] * wr[:, None]
    out = t[:, c0] * (1.0 - wc)
    out += t[:, c1] * wc
    return out


def _value_noise(shape: tuple[int, int], pixel: float, scales: Sequence[float], rng: np.random.Generator,
                 decay: float = 0.55) -> np.ndarray:
    """Fractal value noise (float32, ~zero mean, ~unit std) on a grid of ``pixel``-metre cells.

    ``scales`` are the feature sizes in metres, largest first; each octave's amplitude is ``decay``
    times the previous one.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for s in scales:
        cells = s / pixel  # output pixels per noise cell
        nh, nw = int(h / cells) + 3, int(w / cells) + 3
        coarse = rng.standard_normal((nh, nw), dtype=np.float32)
        off_r, off_c = rng.random(2) * 0.99  # random phase, keeps octaves from sharing nodes
        rows = _lerp_axis(h, nh, 1.0 / cells, 1.0 + off_r + 0.5 / cells, smooth=True)
        cols = _lerp_axis(w, nw, 1.0 / cells, 1.0 + off_c + 0.5 / cells, smooth=True)
        layer = _resample(coarse, rows, cols)
        layer *= amp
        out += layer
        total += amp * amp
        amp *= decay
    out /= np.float32(math.sqrt(total) * 0.6)  # smoothstep interpolation shrinks the std to ~0.6
    return out


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``a`` moved by ``dr`` rows and ``dc`` columns; uncovered cells are 0."""
    out = np.zeros_like(a)
    h, w = a.shape
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src_r = slice(max(0, -dr), h - max(0, dr))
    dst_r = slice(max(0, dr), h - max(0, -dr))
    src_c = slice(max(0, -dc), w - max(0, dc))
    dst_c = slice(max(0, dc), w - max(0, -dc))
    out[dst_r, dst_c] = a[src_r, src_c]
    return out


def _threshold_for(field: np.ndarray, fraction: float, mask: np.ndarray | None = None) -> float:
    """Value above which ``fraction`` of ``field`` (where ``mask``) lies, from a 1/9 subsample."""
    sub = field[::3, ::3]
    if mask is not None:
        sub = sub[mask[::3, ::3]]
    if sub.size == 0 or fraction <= 0.0:
        return float("inf")
    if fraction >= 1.0:
        return -float("inf")
    return float(np.quantile(sub, 1.0 - fraction))


@dataclass
class _Fields:
    """Everything of a scene at 20 m except noise; float32 arrays of ``(size/2, size/2)``."""

    size: int  # 10 m pixels
    cover: dict[str, np.ndarray]  # land cover fractions (sum to 1)
    texture: np.ndarray  # surface brightness multiplier (~0.85-1.15)
    alpha: np.ndarray  # cloud opacity 0-1
    cloud_bright: np.ndarray  # cloud brightness multiplier (~0.85-1.05)
    shadow: np.ndarray  # shadow strength 0-1
    shadow_dark: np.ndarray  # surface factor in full shadow (0.25-0.45)

    @classmethod
    def generate(cls, size: int, seed: int, sun_azimuth: float, sun_elevation: float,
                 cloud_cover: float) -> _Fields:
        n = size // 2
        shape = (n, n)
        extent = size * 10.0

        def scales(*metres: float) -> list[float]:
            return [min(m, extent / 2) for m in metres]

        land = scales(12000, 4000, 1500, 500, 160)
        # land cover: soft competition of four noise fields, water as distinct lakes/rivers
        logits = {}
        for k, name in enumerate(_COVERS):
            f = _value_noise(shape, 20.0, land, _rng(seed, f"cover-{name}"))
            bias = (0.4, 0.0, -1.1, -0.6)[k]  # vegetation most common, water least
            f += np.float32(bias)
            f *= np.float32(4.0 if name == "water" else 2.5)
            logits[name] = f
        m = np.maximum.reduce([logits[c] for c in _COVERS])
        total = np.zeros(shape, np.float32)
        for c in _COVERS:
            logits[c] -= m
            np.exp(logits[c], out=logits[c])
            total += logits[c]
        for c in _COVERS:
            logits[c] /= total
        del m, total
        texture = _value_noise(shape, 20.0, scales(800, 200, 60), _rng(seed, "texture"))
        texture *= np.float32(0.07)
        texture += np.float32(1.0)

        # clouds: a thick layer (sharp edges) and a thin, diffuse layer (max opacity ~0.5)
        thick_f = _value_noise(shape, 20.0, scales(6000, 2500, 900, 300, 100), _rng(seed, "cloud-thick"))
        thin_f = _value_noise(shape, 20.0, scales(8000, 3000, 1000, 300), _rng(seed, "cloud-thin"))
        w_thick, w_thin, thin_max = 0.35, 1.2, 0.5
        thin_frac = 0.3 * cloud_cover
        # thin-layer opacity > VISIBLE_CLOUD where thin_f > t_thin + w_thin * VISIBLE_CLOUD / thin_max
        t_thin = _threshold_for(thin_f, thin_frac) - w_thin * VISIBLE_CLOUD / thin_max
        alpha_thin = np.clip((thin_f - np.float32(t_thin)) / np.float32(w_thin), 0, 1, dtype=np.float32)
        alpha_thin *= np.float32(thin_max)
        del thin_f
        thin_visible = alpha_thin > VISIBLE_CLOUD
        rest = (cloud_cover - thin_frac) / max(1e-9, 1.0 - thin_frac)
        t_thick = _threshold_for(thick_f, rest, ~thin_visible) - w_thick * VISIBLE_CLOUD
        del thin_visible
        alpha = np.clip((thick_f - np.float32(t_thick)) / np.float32(w_thick), 0, 1, dtype=np.float32)
        del thick_f
        # union of the two layers: 1 - (1 - a)(1 - b)
        alpha = 1.0 - (1.0 - alpha) * (1.0 - alpha_thin)
        del alpha_thin
        cloud_bright = _value_noise(shape, 20.0, scales(1500, 400, 120), _rng(seed, "cloud-bright"))
        cloud_bright *= np.float32(0.05)
        cloud_bright += np.float32(0.97)

        # shadows: the cloud footprint moved away from the sun by height / tan(elevation)
        dist = min(2500.0, CLOUD_HEIGHT_M / math.tan(math.radians(max(sun_elevation, 15.0))))
        az = math.radians(sun_azimuth)
        dc = int(round(-math.sin(az) * dist / 20.0))  # east is +column; shadow points away from the sun
        dr = int(round(math.cos(az) * dist / 20.0))  # north is -row
        moved = _shift(alpha, dr, dc)
        shadow = np.clip((moved - np.float32(0.25)) / np.float32(0.3), 0, 1, dtype=np.float32)
        del moved
        shadow_dark = _value_noise(shape, 20.0, scales(3000, 800), _rng(seed, "shadow-dark"))
        shadow_dark *= np.float32(0.04)
        shadow_dark += np.float32(0.35)
        np.clip(shadow_dark, 0.25, 0.45, out=shadow_dark)
        log.debug("sample fields: shadow offset %d, %d px at 20 m (%.0f m)", dr, dc, dist)
        return cls(size, logits, texture, alpha.astype(np.float32, copy=False), cloud_bright, shadow, shadow_dark)

    def reflectance20(self, band: str) -> np.ndarray:
        """Top-of-canopy-plus-cloud reflectance of ``band`` at 20 m (float32, no noise)."""
        surf = np.zeros_like(self.alpha)
        for c in _COVERS:
            surf += self.cover[c] * np.float32(_SPECTRA[c][band])
        surf *= self.texture
        # shadow: surface * (1 - (1 - dark) * strength)
        shade = 1.0 - self.shadow_dark
        shade *= self.shadow
        np.subtract(1.0, shade, out=shade)
        surf *= shade
        del shade
        # cloud mixing: (1 - alpha) * surface + alpha * cloud
        cloud = self.cloud_bright * np.float32(_SPECTRA["cloud"][band])
        cloud -= surf
        cloud *= self.alpha
        surf += cloud
        return surf


# ------------------------------------------------------------------------------------------- pixels


def _wedge_mask(h: int, w: int, rows: slice, fraction: float) -> np.ndarray:
    """Nodata pixels (True) of rows ``rows`` of an ``h`` x ``w`` grid: a wedge at the left edge.

    Nodata where the pixel centre's ``x / width < p - q * y / height``, which covers ``fraction`` of
    the tile: a triangle (top width ``2 * fraction``) up to 0.5, a trapezoid beyond.
    """
    r = np.arange(rows.start, rows.stop, dtype=np.float64)
    if fraction <= 0.0:
        return np.zeros((len(r), w), bool)
    p, q = (2 * fraction, 2 * fraction) if fraction <= 0.5 else (1.0, 2 * (1 - fraction))
    limit = (p - q * (r + 0.5) / h) * w  # columns (centre x in pixels) left of this are nodata
    c = np.arange(w, dtype=np.float64) + 0.5
    return c[None, :] < limit[:, None]


def _row_chunks(n: int, step: int = 1024) -> Iterator[slice]:
    for r in range(0, n, step):
        yield slice(r, min(n, r + step))


def _to_dn(refl: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 DN (x10000 + 1000, clipped to 1-65535), 0 where ``nodata``."""
    refl *= np.float32(10000.0)
    refl += np.float32(DN_OFFSET)
    np.rint(refl, out=refl)
    np.clip(refl, 1, 65535, out=refl)
    dn = refl.astype(np.uint16)
    dn[nodata] = 0
    return dn


def _add_noise(refl: np.ndarray, rng: np.random.Generator) -> None:
    """A little sensor noise: sd 0.002 + 1 % of the signal (reflectance units), in place."""
    noise = rng.standard_normal(refl.shape, dtype=np.float32)
    sd = refl * np.float32(0.01)
    sd += np.float32(0.002)
    noise *= sd
    refl += noise


def _band_dn(fields: _Fields, band: Band, seed: int, nodata_wedge: float) -> np.ndarray:
    """uint16 DN of ``band`` at its native resolution."""
    rng = _rng(seed, f"noise-{band.name}")
    r20 = fields.reflectance20(band.name)
    n20 = r20.shape[0]
    if band.resolution == 20:
        _add_noise(r20, rng)
        return _to_dn(r20, _wedge_mask(n20, n20, slice(0, n20), nodata_wedge))
    if band.resolution == 60:
        n60 = n20 // 3
        r60 = r20.reshape(n60, 3, n60, 3).mean(axis=(1, 3), dtype=np.float32)
        del r20
        _add_noise(r60, rng)
        return _to_dn(r60, _wedge_mask(n60, n60, slice(0, n60), nodata_wedge))
    # 10 m: bilinear upsampling of the 20 m field, chunk by chunk
    n10 = fields.size
    out = np.empty((n10, n10), np.uint16)
    cols = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    for rows in _row_chunks(n10):
        r10 = _resample(r20, _sub_axis(n10, n20, rows), cols)
        _add_noise(r10, rng)
        out[rows] = _to_dn(r10, _wedge_mask(n10, n10, rows, nodata_wedge))
    return out


def _sub_axis(n10: int, n20: int, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation indices/weights of 10 m rows ``rows`` on the 20 m grid."""
    i0, i1, w = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    return i0[rows], i1[rows], w[rows]


def _truth(fields: _Fields, nodata_wedge: float) -> np.ndarray:
    """Truth at 10 m: 0 clear, 1 cloud (opacity > VISIBLE_CLOUD), 2 shadow, 255 nodata."""
    n10 = fields.size
    n20 = n10 // 2
    out = np.empty((n10, n10), np.uint8)
    cols = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    for rows in _row_chunks(n10):
        ax = _sub_axis(n10, n20, rows)
        alpha = _resample(fields.alpha, ax, cols)
        shadow = _resample(fields.shadow, ax, cols)
        t = np.where(alpha > VISIBLE_CLOUD, np.uint8(1), np.where(shadow > SHADOW_TRUTH, np.uint8(2), np.uint8(0)))
        t[_wedge_mask(n10, n10, rows, nodata_wedge)] = TRUTH_NODATA
        out[rows] = t
    return out


def _scl(fields: _Fields, nodata_wedge: float) -> np.ndarray:
    """A Sen2Cor-like scene classification at 20 m (0 nodata, 3 shadow, 4 veg, 5 bare, 6 water,
    8/9 medium/high-probability cloud, 10 thin cirrus)."""
    cover = np.stack([fields.cover[c] for c in _COVERS]).argmax(axis=0)
    scl = np.array([4, 5, 6, 5], np.uint8)[cover]
    del cover
    scl[fields.shadow > SHADOW_TRUTH] = 3
    a = fields.alpha
    scl[(a > VISIBLE_CLOUD) & (a <= 0.35)] = 10
    scl[(a > 0.35) & (a <= 0.7)] = 8
    scl[a > 0.7] = 9
    n = scl.shape[0]
    scl[_wedge_mask(n, n, slice(0, n), nodata_wedge)] = 0
    return scl


def _transform(x0: float, y0: float, res: float) -> Affine:
    return Affine(res, 0.0, x0, 0.0, -res, y0)


def _write_cog(path: Path, data: np.ndarray, transform: Affine, crs: CRS, *, nodata: float,
               categorical: bool) -> None:
    """Write a single-band array as a DEFLATE COG (internal tiles, overviews) via an in-memory dataset."""
    h, w = data.shape
    profile = dict(driver="MEM", width=w, height=h, count=1, dtype=data.dtype.name, crs=crs,
                   transform=transform, nodata=nodata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open("", "w", **profile) as mem:
        mem.write(data, 1)
        rasterio.shutil.copy(
            mem, str(tmp), driver="COG", COMPRESS="DEFLATE", PREDICTOR="YES" if data.itemsize > 1 else "NO",
            BLOCKSIZE=512 if max(h, w) >= 2048 else 256,
            OVERVIEW_RESAMPLING="MODE" if categorical else "AVERAGE", NUM_THREADS="ALL_CPUS",
        )
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- STAC


def _to_lonlat(crs: CRS, xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    lon, lat = warp_transform(crs, CRS.from_epsg(4326), list(xs), list(ys))
    return list(lon), list(lat)


def _sun_elevation(when: dt.datetime, lat: float, lon: float) -> float:
    """Approximate solar elevation, degrees (good to ~1 deg, enough for a synthetic scene)."""
    utc = when.astimezone(dt.UTC)
    doy = utc.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    solar_time = utc.hour + utc.minute / 60 + utc.second / 3600 + lon / 15.0
    hour_angle = math.radians(15.0 * (solar_time - 12.0))
    phi = math.radians(lat)
    s = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    return math.degrees(math.asin(max(-1.0, min(1.0, s))))


def _mgrs_for(origin: tuple[float, float], epsg: int) -> tuple[int, str, str, str]:
    """(UTM zone, latitude band, 100 km grid square, tile code like '31TDH') of the MGRS tile whose
    top-left corner is ``origin`` (the 100 km square holding the centre of a 109.8 km tile)."""
    zone = epsg % 100
    x, y = origin[0] + 54900.0, origin[1] - 54900.0  # centre of the full MGRS tile
    _, lat = _to_lonlat(CRS.from_epsg(epsg), [x], [y])
    band = "CDEFGHJKLMNPQRSTUVWX"[max(0, min(19, int((lat[0] + 80) // 8)))]
    col_sets = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
    col = col_sets[(zone - 1) % 3][max(0, min(7, int(x // 100000) - 1))]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    row = rows[(int(y // 100000) + (5 if zone % 2 == 0 else 0)) % 20]
    return zone, band, col + row, f"{zone:02d}{band}{col}{row}"


def _num(v: float) -> float | int:
    """JSON-friendly number: an int when integral (Earth Search writes 10, not 10.0)."""
    return int(v) if float(v).is_integer() else float(v)


def _file_fields(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return {"file:checksum": "1220" + digest.hexdigest(), "file:size": path.stat().st_size}


def _grid_fields(size: int, res: int, x0: float, y0: float) -> dict[str, Any]:
    n = size * 10 // res
    return {
        "gsd": res,
        "proj:shape": [n, n],
        "proj:transform": [_num(res), 0, _num(x0), 0, _num(-res), _num(y0)],
    }


def _footprint(size: int, x0: float, y0: float, nodata_wedge: float) -> list[tuple[float, float]]:
    """Outline of the valid data (UTM metres), counter-clockwise, closed."""
    e = size * 10.0
    f = nodata_wedge
    if f <= 0:
        x_top, x_bot = 0.0, 0.0
    elif f <= 0.5:
        x_top, x_bot = 2 * f * e, 0.0
    else:
        x_top, x_bot = e, e * (1 - 2 * (1 - f))
    pts = [(x0 + x_bot, y0 - e), (x0 + e, y0 - e), (x0 + e, y0), (x0 + x_top, y0)]
    # dedupe consecutive duplicates, close the ring
    ring: list[tuple[float, float]] = []
    for p in pts:
        if not ring or ring[-1] != p:
            ring.append(p)
    if ring[0] == ring[-1]:
        ring.pop()
    ring.append(ring[0])
    return ring


def _build_item(
    *, scene_id: str, hrefs: dict[str, Path], size: int, x0: float, y0: float, crs: CRS, epsg: int,
    datetime: dt.datetime, nodata_wedge: float, sun_azimuth: float, sun_elevation: float,
    truth_counts: np.ndarray, scl_counts: np.ndarray, seed: int, cloud_cover: float,
) -> pystac.Item:
    ring = _footprint(size, x0, y0, nodata_wedge)
    lons, lats = _to_lonlat(crs, [p[0] for p in ring], [p[1] for p in ring])
    coords = [[round(lo, 9), round(la, 9)] for lo, la in zip(lons, lats, strict=True)]
    bbox = [round(min(lons), 6), round(min(lats), 6), round(max(lons), 6), round(max(lats), 6)]
    geometry = {"type": "Polygon", "coordinates": [coords]}
    # centroid of the footprint (planar in UTM, then to lon/lat)
    xs = np.array([p[0] for p in ring[:-1]])
    ys = np.array([p[1] for p in ring[:-1]])
    cx, cy = _polygon_centroid(xs, ys)
    (clon,), (clat,) = _to_lonlat(crs, [cx], [cy])
    zone, lat_band, square, tile = _mgrs_for((x0, y0), epsg)

    n_all = int(truth_counts.sum())
    n_valid = n_all - int(truth_counts[TRUTH_NODATA])
    cloud_pct = 100.0 * int(truth_counts[1]) / n_valid if n_valid else 0.0
    shadow_pct = 100.0 * int(truth_counts[2]) / n_valid if n_valid else 0.0
    nodata_pct = 100.0 * int(truth_counts[TRUTH_NODATA]) / n_all
    scl_valid = max(1, int(scl_counts.sum() - scl_counts[0]))

    def scl_pct(*classes: int) -> float:
        return round(100.0 * sum(int(scl_counts[c]) for c in classes) / scl_valid, 6)

    platform = {"S2A": "sentinel-2a", "S2B": "sentinel-2b", "S2C": "sentinel-2c"}.get(scene_id[:3], "sentinel-2b")
    unit = platform[-1].upper()
    stamp = f"{datetime:%Y%m%dT%H%M%S}"
    doy = datetime.timetuple().tm_yday
    props: dict[str, Any] = {
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(cloud_pct, 5),
        "proj:epsg": epsg,
        "proj:centroid": {"lat": round(clat, 5), "lon": round(clon, 5)},
        "mgrs:utm_zone": zone,
        "mgrs:latitude_band": lat_band,
        "mgrs:grid_square": square,
        "grid:code": f"MGRS-{tile}",
        "view:azimuth": 105.0,
        "view:incidence_angle": 6.0,
        "view:sun_azimuth": float(sun_azimuth),
        "view:sun_elevation": round(sun_elevation, 6),
        "s2:tile_id": f"S2{unit}_OPER_MSI_L2A_TL_2BPS_{stamp}_A000000_T{tile}_N05.11",
        "s2:degraded_msi_data_percentage": 0,
        "s2:nodata_pixel_percentage": round(nodata_pct, 6),
        "s2:saturated_defective_pixel_percentage": 0,
        "s2:cloud_shadow_percentage": round(shadow_pct, 6),
        "s2:vegetation_percentage": scl_pct(4),
        "s2:not_vegetated_percentage": scl_pct(5),
        "s2:water_percentage": scl_pct(6),
        "s2:unclassified_percentage": 0,
        "s2:medium_proba_clouds_percentage": scl_pct(8),
        "s2:high_proba_clouds_percentage": scl_pct(9),
        "s2:thin_cirrus_percentage": scl_pct(10),
        "s2:snow_ice_percentage": 0,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": "05.11",
        "s2:product_uri": f"S2{unit}_MSIL2A_{stamp}_N0511_R008_T{tile}_{stamp}.SAFE",
        "s2:generation_time": datetime.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "s2:datatake_id": f"GS2{unit}_{stamp}_000000_N05.11",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": f"S2{unit}_OPER_MSI_L2A_DS_2BPS_{stamp}_S{stamp}_N05.11",
        "s2:reflectance_conversion_factor": round(
            1.0 / (1.0 - 0.01673 * math.cos(2 * math.pi * (doy - 4) / 365.25)) ** 2, 12),
        "processing:software": {"cloudmask.sample": str(SAMPLE_VERSION)},
        "cloudmask:synthetic": True,
        "cloudmask:sample": {"seed": seed, "size": size, "nodata_wedge": nodata_wedge,
                             "cloud_cover": cloud_cover, "version": SAMPLE_VERSION},
    }
    item = pystac.Item(id=scene_id, geometry=geometry, bbox=bbox, datetime=datetime, properties=props,
                       stac_extensions=list(STAC_EXTENSIONS))
    for band in BANDS:
        path = hrefs[band.key]
        item.add_asset(band.key, pystac.Asset(
            href=str(path), media_type=COG_TYPE, title=band.title, roles=["data", "reflectance"],
            extra_fields={
                "eo:bands": [{"name": band.name, "common_name": band.common_name,
                              "center_wavelength": band.center_wavelength,
                              "full_width_half_max": band.fwhm}],
                **_grid_fields(size, band.resolution, x0, y0),
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": band.resolution,
                                  "scale": 0.0001, "offset": -0.1}],
                **_file_fields(path),
            },
        ))
    item.add_asset("scl", pystac.Asset(
        href=str(hrefs["scl"]), media_type=COG_TYPE, title="Scene classification map (SCL)", roles=["data"],
        extra_fields={
            **_grid_fields(size, 20, x0, y0),
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            **_file_fields(hrefs["scl"]),
        },
    ))
    item.add_asset("truth", pystac.Asset(
        href=str(hrefs["truth"]), media_type=COG_TYPE,
        title="Synthetic truth mask (0 clear, 1 cloud, 2 shadow, 255 nodata)", roles=["truth"],
        extra_fields={
            **_grid_fields(size, 10, x0, y0),
            "raster:bands": [{"nodata": TRUTH_NODATA, "data_type": "uint8", "spatial_resolution": 10}],
            **_file_fields(hrefs["truth"]),
        },
    ))
    return item


def _polygon_centroid(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    x1, y1 = np.roll(xs, -1), np.roll(ys, -1)
    cross = xs * y1 - x1 * ys
    area = cross.sum() / 2.0
    if abs(area) < 1e-9:
        return float(xs.mean()), float(ys.mean())
    return float(((xs + x1) * cross).sum() / (6 * area)), float(((ys + y1) * cross).sum() / (6 * area))


def _build_collection(collection_id: str, items: list[pystac.Item]) -> pystac.Collection:
    boxes = np.array([it.bbox for it in items if it.bbox])
    bbox = [float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()), float(boxes[:, 3].max())]
    times = sorted(it.datetime for it in items if it.datetime is not None)
    collection = pystac.Collection(
        id=collection_id,
        title="Sentinel-2 Level-2A, Collection 1 (synthetic)",
        description="Synthetic Sentinel-2 L2A scenes in the Earth Search v1 sentinel-2-c1-l2a layout, "
                    "with a per-scene cloud/shadow truth asset (made by cloudmask.sample).",
        extent=pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[times[0], times[-1]]])),
        license="CC0-1.0",
        keywords=["sentinel", "earth observation", "esa", "synthetic"],
        extra_fields={"cloudmask:synthetic": True},
    )
    collection.summaries = pystac.Summaries({
        "platform": sorted({it.properties["platform"] for it in items}),
        "constellation": ["sentinel-2"],
        "instruments": ["msi"],
    })
    for it in items:
        collection.add_item(it)
    return collection


def _catalog_is_current(catalog_path: Path, params: dict[str, Any]) -> bool:
    """True when ``catalog_path`` was made with ``params`` and every file it names exists."""
    try:
        stored = json.loads(catalog_path.read_text()).get("cloudmask:sample")
    except (OSError, ValueError):
        return False
    if stored != params:
        return False
    col_dir = catalog_path.parent / params["collection_id"]
    try:
        items = [p for p in col_dir.glob("*/*.json")]
        if len(items) != params["n_scenes"]:
            return False
        for p in items:
            d = json.loads(p.read_text())
            for a in d.get("assets", {}).values():
                if not (p.parent / a["href"]).is_file():
                    return False
    except (OSError, ValueError, KeyError):
        return False
    return True
