"""Mask outputs: a tiled GeoTIFF written block by block, finished as a Cloud-Optimized GeoTIFF.

Nothing appears at the final path until the COG is complete: blocks go to a hidden temporary file
beside the target, the GDAL COG driver copies it (internal tiles, overviews by ``MODE``) to a second
temporary file, and an atomic rename publishes it. Any failure removes the temporaries.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from odc.geo.geobox import GeoBox
from rasterio.windows import Window

from .errors import WriteError
from .models import CLASSES, NODATA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CogConfig:
    """COG creation options: compression, internal tile size (pixels), overview resampling."""

    compress: str = "DEFLATE"
    blocksize: int = 512
    overview_resampling: str = "MODE"
    level: int = 6


def _tmp_path(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.tif")


class CogSink:
    """A :class:`~cloudmask.stream.MaskSink` writing a class COG (and optionally a probability COG).

    Use as a context manager: on normal exit the COGs are finalised and renamed into place; on an
    exception everything temporary is removed and nothing is left at the final paths.
    """

    def __init__(
        self,
        path: Path,
        geobox: GeoBox,
        probabilities_path: Path | None = None,
        config: CogConfig | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.geobox = geobox
        self.prob_path = Path(probabilities_path) if probabilities_path else None
        self.config = config or CogConfig()
        self.tags = tags or {}
        self._tmp: list[Path] = []
        self._mask: Any = None
        self._prob: Any = None

    def _profile(self, count: int, nodata: int | None) -> dict[str, Any]:
        return {
            "driver": "GTiff",
            "width": self.geobox.width,
            "height": self.geobox.height,
            "count": count,
            "dtype": "uint8",
            "crs": str(self.geobox.crs),
            "transform": self.geobox.transform,
            "nodata": nodata,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "compress": "DEFLATE",
            "predictor": 1,
            "zlevel": 1,
            "BIGTIFF": "IF_SAFER",
        }

    def __enter__(self) -> CogSink:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_path(self.path, "blocks")
            self._tmp.append(tmp)
            self._mask = rasterio.open(tmp, "w", **self._profile(1, NODATA))
            self._mask.write_colormap(1, MASK_COLORMAP)  # before any pixel: TIFF tags are fixed after
            if self.prob_path is not None:
                ptmp = _tmp_path(self.prob_path, "blocks")
                self._tmp.append(ptmp)
                self._prob = rasterio.open(ptmp, "w", **self._profile(len(CLASSES), None))
        except (OSError, rasterio.RasterioIOError) as err:
            self._cleanup()
            raise WriteError(f"cannot write mask under {self.path.parent}: {err}") from err
        return self

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        win = Window(0, row, classes.shape[1], classes.shape[0])
        self._mask.write(classes, 1, window=win)
        if self._prob is not None and probabilities is not None:
            self._prob.write(probabilities, window=win)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._cleanup()

    def _finish(self) -> None:
        outputs = [(self._mask, self.path, "mask")]
        if self._prob is not None and self.prob_path is not None:
            outputs.append((self._prob, self.prob_path, "probabilities"))
        staged: list[tuple[Path, Path]] = []
        for ds, final, kind in outputs:
            if kind == "mask":
                ds.update_tags(**self.tags)
                ds.set_band_description(1, "cloudmask classes: " + ", ".join(f"{k} {v}" for k, v in CLASSES.items()))
            else:
                for b, name in CLASSES.items():
                    ds.set_band_description(b + 1, f"probability of {name}, percent")
            src_name = ds.name
            ds.close()
            cog = _tmp_path(final, "cog")
            self._tmp.append(cog)
            try:
                rasterio.shutil.copy(
                    src_name,
                    cog,
                    driver="COG",
                    COMPRESS=self.config.compress,
                    LEVEL=self.config.level,
                    BLOCKSIZE=self.config.blocksize,
                    OVERVIEW_RESAMPLING=self.config.overview_resampling if kind == "mask" else "AVERAGE",
                    BIGTIFF="IF_SAFER",
                )
            except (OSError, rasterio.RasterioIOError) as err:
                raise WriteError(f"cannot write COG {final}: {err}") from err
            staged.append((cog, final))
        for cog, final in staged:
            os.replace(cog, final)
        self._mask = self._prob = None

    def _cleanup(self) -> None:
        for ds in (self._mask, self._prob):
            if ds is not None and not ds.closed:
                ds.close()
        for p in self._tmp:
            p.unlink(missing_ok=True)
        self._tmp.clear()


#: Palette for viewers: clear transparent-ish grey, cloud white, shadow dark blue, nodata black.
MASK_COLORMAP = {
    0: (34, 139, 34, 255),
    1: (255, 255, 255, 255),
    2: (40, 40, 120, 255),
    NODATA: (0, 0, 0, 0),
}


def fractions_from_counts(counts: np.ndarray) -> dict[str, float]:
    """Percentages from a 256-bin histogram of a mask: classes share of all pixels, and ``nodata``."""
    total = counts.sum()
    if total == 0:
        return {**{v: 0.0 for v in CLASSES.values()}, "nodata": 0.0}
    out = {name: 100.0 * counts[k] / total for k, name in CLASSES.items()}
    out["nodata"] = 100.0 * counts[NODATA] / total
    return out
