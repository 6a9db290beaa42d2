"""Build the real demo catalogue (cloudmask/data/demo) from the On Cloud N chips in ../shared.

    .venv/bin/python scripts/make_demo_catalog.py [--shared ../shared] [--out cloudmask/data/demo]

Five real Sentinel-2 L2A chips (512 x 512 px at 10 m, blue/green/red/nir, CC BY 4.0; see the chips'
SOURCE.md) become DEFLATE COGs with internal overviews, described by a static, self-contained STAC
catalogue in the Earth Search v1 ``sentinel-2-l2a`` layout (asset keys blue/green/red/nir, processing
baseline before 04.00: ``earthsearch:boa_offset_applied: false``, ``raster:bands`` scale 1e-4, offset 0).
The chips' ensemble prediction (a model output, 0/1 cloud, not a human label) ships georeferenced as the
``ensemble`` asset, as a second opinion for ``cloudmask evaluate``. Running it twice gives identical files.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
import rasterio.errors
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

ROOT = Path(__file__).resolve().parents[1]
COLLECTION = "sentinel-2-l2a"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
#: Earth Search asset key, file band id, title, centre wavelength and FWHM (micrometres).
BANDS = (
    ("blue", "B02", "Blue (band 2) - 10m", 0.49, 0.098),
    ("green", "B03", "Green (band 3) - 10m", 0.56, 0.045),
    ("red", "B04", "Red (band 4) - 10m", 0.665, 0.038),
    ("nir", "B08", "NIR 1 (band 8) - 10m", 0.842, 0.145),
)
ATTRIBUTION = (
    "Contains modified Copernicus Sentinel data 2020. Radiant Earth Foundation (2022), Sentinel-2 Cloud Cover "
    "Segmentation Dataset (Version 1), Radiant MLHub, doi:10.34911/RDNT.HFQ6M7, CC BY 4.0."
)
DESCRIPTION = {
    "adwp": "open water of Lake Victoria with scattered cumulus and their shadows",
    "adwu": "heavy broken cloud with shadows",
    "adwz": "mostly cloud with a clear corner, a third of it lake water",
    "adxp": "fully overcast",
    "akny": "green farmland with small clouds and shadows",
}
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
]
FIXED_TIME = "2026-12-01T00:00:00Z"  # 'created'/'updated' of the items: fixed, so rebuilds are identical


def write_cog(src_path: Path, dst: Path, *, crs: CRS, transform: Any, nodata: float | None,
              categorical: bool) -> None:
    """Copy one single-band raster into a DEFLATE COG (256 px tiles, internal overviews)."""
    with warnings.catch_warnings():  # the ensemble file has no georeferencing: we add the chip's
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(src_path) as src:
            data = src.read(1)
    profile = dict(driver="MEM", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
                   crs=crs, transform=transform, nodata=nodata)
    with rasterio.open("", "w", **profile) as mem:
        mem.write(data, 1)
        rasterio.shutil.copy(
            mem, str(dst), driver="COG", COMPRESS="DEFLATE", LEVEL=9,
            PREDICTOR="NO" if categorical else "YES", BLOCKSIZE=256,
            OVERVIEW_RESAMPLING="NEAREST" if categorical else "AVERAGE", OVERVIEW_COUNT=1,
        )


def file_fields(path: Path) -> dict[str, Any]:
    """file:checksum (sha2-256 multihash) and file:size of ``path``."""
    return {"file:checksum": "1220" + hashlib.sha256(path.read_bytes()).hexdigest(),
            "file:size": path.stat().st_size}


def build_item(chip: str, when: dt.datetime, location: str, src_dir: Path, item_dir: Path) -> pystac.Item:
    """Write one chip's COGs into ``item_dir`` and return its STAC item (absolute hrefs for now)."""
    item_dir.mkdir(parents=True)
    with rasterio.open(src_dir / "B02.tif") as ref:
        crs, transform, (h, w), bounds = ref.crs, ref.transform, ref.shape, ref.bounds
    epsg = crs.to_epsg()
    assets: dict[str, pystac.Asset] = {}
    grid = {"proj:shape": [h, w], "proj:transform": [int(v) if float(v).is_integer() else v for v in transform[:6]]}
    for key, band_id, title, wl, fwhm in BANDS:
        dst = item_dir / f"{band_id}.tif"
        write_cog(src_dir / f"{band_id}.tif", dst, crs=crs, transform=transform, nodata=0, categorical=False)
        assets[key] = pystac.Asset(
            href=str(dst), media_type=COG_TYPE, title=title, roles=["data", "reflectance"],
            extra_fields={
                "eo:bands": [{"name": key, "common_name": key, "description": title.split(" - ")[0],
                              "center_wavelength": wl, "full_width_half_max": fwhm}],
                "gsd": 10, **grid,
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                  "spatial_resolution": 10, "scale": 0.0001, "offset": 0}],
                **file_fields(dst),
            },
        )
    ens = item_dir / "ensemble.tif"
    write_cog(src_dir / "ensemble_prediction.tif", ens, crs=crs, transform=transform, nodata=None,
              categorical=True)
    with rasterio.open(ens) as e:
        cloud_pct = float(np.mean(e.read(1) == 1) * 100.0)
    assets["ensemble"] = pystac.Asset(
        href=str(ens), media_type=COG_TYPE,
        title="On Cloud N model-ensemble cloud prediction (0 not cloud, 1 cloud; a model output, not a label)",
        roles=["metadata"],
        extra_fields={"gsd": 10, **grid, "raster:bands": [{"data_type": "uint8", "spatial_resolution": 10}],
                      **file_fields(ens)},
    )
    xs = [bounds.left, bounds.right, bounds.right, bounds.left, bounds.left]
    ys = [bounds.bottom, bounds.bottom, bounds.top, bounds.top, bounds.bottom]
    lon, lat = warp_transform(crs, CRS.from_epsg(4326), xs, ys)
    ring = [[round(a, 7), round(b, 7)] for a, b in zip(lon, lat, strict=True)]
    item = pystac.Item(
        id=f"ONCLOUDN_{chip}_{when:%Y%m%d}_L2A",
        geometry={"type": "Polygon", "coordinates": [ring]},
        bbox=[round(min(lon), 7), round(min(lat), 7), round(max(lon), 7), round(max(lat), 7)],
        datetime=when,
        properties={
            "title": f"On Cloud N chip {chip}, {location}: {DESCRIPTION[chip]}",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": round(cloud_pct, 4),
            "proj:epsg": epsg,
            "s2:product_type": "S2MSI2A",
            "earthsearch:boa_offset_applied": False,
            "created": FIXED_TIME,
            "updated": FIXED_TIME,
            "cloudmask:chip": chip,
            "cloudmask:location": location,
            "cloudmask:cloud_cover_source": "ensemble asset (model output)",
            "sci:citation": ATTRIBUTION,
        },
        stac_extensions=list(STAC_EXTENSIONS),
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def build(shared: Path, out: Path) -> Path:
    """(Re)build the catalogue in ``out``; returns ``out/catalog.json``."""
    src = shared / "data" / "real" / "oncloudn-chips"
    if not (src / "metadata.csv").is_file():
        raise SystemExit(f"{src}/metadata.csv not found: pass --shared pointing at the shared data folder")
    with (src / "metadata.csv").open() as f:
        rows = list(csv.DictReader(f))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    items = []
    for row in sorted(rows, key=lambda r: r["chip_id"]):
        when = dt.datetime.fromisoformat(row["datetime"].replace("Z", "+00:00"))
        item_id = f"ONCLOUDN_{row['chip_id']}_{when:%Y%m%d}_L2A"
        items.append(build_item(row["chip_id"], when, row["location"], src / row["chip_id"],
                                out / COLLECTION / item_id))
    boxes = np.array([it.bbox for it in items])
    times = sorted(it.datetime for it in items if it.datetime)
    collection = pystac.Collection(
        id=COLLECTION,
        title="Sentinel-2 Level-2A chips with clouds (On Cloud N, real data)",
        description="Five real Sentinel-2 L2A chips (512 x 512 px at 10 m; blue, green, red, nir; processing "
                    "baseline before 04.00, no offset) in the Earth Search v1 sentinel-2-l2a layout. "
                    + ATTRIBUTION,
        extent=pystac.Extent(
            pystac.SpatialExtent([[float(boxes[:, 0].min()), float(boxes[:, 1].min()),
                                   float(boxes[:, 2].max()), float(boxes[:, 3].max())]]),
            pystac.TemporalExtent([[times[0], times[-1]]]),
        ),
        license="CC-BY-4.0",
        keywords=["sentinel", "earth observation", "clouds", "on cloud n"],
        providers=[
            pystac.Provider("ESA", roles=[pystac.ProviderRole.PRODUCER], url="https://sentinel.esa.int"),
            pystac.Provider("Radiant Earth Foundation", roles=[pystac.ProviderRole.LICENSOR],
                            url="https://doi.org/10.34911/RDNT.HFQ6M7"),
        ],
        extra_fields={"sci:citation": ATTRIBUTION, "sci:doi": "10.34911/RDNT.HFQ6M7"},
    )
    collection.summaries = pystac.Summaries({"constellation": ["sentinel-2"], "instruments": ["msi"]})
    for it in items:
        collection.add_item(it)
    catalog = pystac.Catalog(id="cloudmask-demo", title="cloudmask demo catalogue (real Sentinel-2)",
                             description="Real Sentinel-2 L2A chips for `cloudmask demo`. " + ATTRIBUTION)
    catalog.add_child(collection)
    catalog.normalize_hrefs(str(out))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    # SOURCE.md as in the shared folder, less the note that quotes the chips' old, wrong description
    source = re.sub(r" \(corrected (\d{4}-\d{2}-\d{2}); the earlier text called adwp [a-z]+\)", r" (corrected \1)",
                    (src / "SOURCE.md").read_text(encoding="utf-8"))
    (out / "SOURCE.md").write_text(source, encoding="utf-8")
    (out / "ATTRIBUTION.txt").write_text(
        ATTRIBUTION + "\nLicence: CC BY 4.0, https://creativecommons.org/licenses/by/4.0/\n"
        "Built by scripts/make_demo_catalog.py from the chips described in SOURCE.md (pixels unchanged, "
        "re-encoded as DEFLATE COGs; the ensemble prediction georeferenced with its chip's grid).\n"
    )
    for p in sorted(out.rglob("*.json")):  # stable key order and a final newline
        p.write_text(json.dumps(json.loads(p.read_text()), indent=1) + "\n")
    return out / "catalog.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    ap.add_argument("--out", type=Path, default=ROOT / "cloudmask" / "data" / "demo")
    args = ap.parse_args()
    print(build(args.shared.resolve(), args.out.resolve()))


if __name__ == "__main__":
    main()
