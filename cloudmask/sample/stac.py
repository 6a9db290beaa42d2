"""STAC items and collections of the synthetic scenes, in the Earth Search v1 ``sentinel-2-c1-l2a`` layout."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from .physics import BANDS, TRUTH_NODATA

#: Bump when the generator's output changes: cached catalogues with another version are rebuilt.
SAMPLE_VERSION = 1

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


# ----------------------------------------------------------------------------------------------- STAC


def to_lonlat(crs: CRS, xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    lon, lat = warp_transform(crs, CRS.from_epsg(4326), list(xs), list(ys))
    return list(lon), list(lat)


def solar_elevation(when: dt.datetime, lat: float, lon: float) -> float:
    """Approximate solar elevation, degrees (good to ~1 deg, enough for a synthetic scene)."""
    utc = when.astimezone(dt.UTC)
    doy = utc.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    solar_time = utc.hour + utc.minute / 60 + utc.second / 3600 + lon / 15.0
    hour_angle = math.radians(15.0 * (solar_time - 12.0))
    phi = math.radians(lat)
    s = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour_angle)
    return math.degrees(math.asin(max(-1.0, min(1.0, s))))


def mgrs_for(origin: tuple[float, float], epsg: int) -> tuple[int, str, str, str]:
    """(UTM zone, latitude band, 100 km grid square, tile code like '31TDH') of the MGRS tile whose
    top-left corner is ``origin`` (the 100 km square holding the centre of a 109.8 km tile)."""
    zone = epsg % 100
    x, y = origin[0] + 54900.0, origin[1] - 54900.0  # centre of the full MGRS tile
    _, lat = to_lonlat(CRS.from_epsg(epsg), [x], [y])
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


def build_item(
    *, scene_id: str, hrefs: dict[str, Path], size: int, x0: float, y0: float, crs: CRS, epsg: int,
    datetime: dt.datetime, nodata_wedge: float, sun_azimuth: float, sun_elevation: float,
    truth_counts: np.ndarray, scl_counts: np.ndarray, seed: int, cloud_cover: float,
) -> pystac.Item:
    ring = _footprint(size, x0, y0, nodata_wedge)
    lons, lats = to_lonlat(crs, [p[0] for p in ring], [p[1] for p in ring])
    coords = [[round(lo, 9), round(la, 9)] for lo, la in zip(lons, lats, strict=True)]
    bbox = [round(min(lons), 6), round(min(lats), 6), round(max(lons), 6), round(max(lats), 6)]
    geometry = {"type": "Polygon", "coordinates": [coords]}
    # centroid of the footprint (planar in UTM, then to lon/lat)
    xs = np.array([p[0] for p in ring[:-1]])
    ys = np.array([p[1] for p in ring[:-1]])
    cx, cy = _polygon_centroid(xs, ys)
    (clon,), (clat,) = to_lonlat(crs, [cx], [cy])
    zone, lat_band, square, tile = mgrs_for((x0, y0), epsg)

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


def build_collection(collection_id: str, items: list[pystac.Item]) -> pystac.Collection:
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
