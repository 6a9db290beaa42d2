"""Writing the synthetic bands as Cloud-Optimized GeoTIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS


def grid_transform(x0: float, y0: float, res: float) -> Affine:
    return Affine(res, 0.0, x0, 0.0, -res, y0)


def write_cog(path: Path, data: np.ndarray, transform: Affine, crs: CRS, *, nodata: float,
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
