"""What the reader needs to know of one scene: per-band assets and the tile's grid.

A :class:`SceneSpec` is the contract between :mod:`cloudmask.profiles` (which builds it from a STAC item
and a provider profile) and :mod:`cloudmask.reader` (which reads pixels). It holds no pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from affine import Affine
from odc.geo.geobox import GeoBox

from .errors import MissingBandError


@dataclass(frozen=True)
class BandAsset:
    """One band of a scene: where it is and how DN become reflectance.

    ``reflectance = DN * scale + offset`` (unitless, 0–1); DN equal to ``nodata`` are invalid.
    """

    band: str
    href: str
    scale: float = 1e-4
    offset: float = 0.0
    nodata: float | None = 0
    resolution: float | None = None  # native pixel size, metres (informative)


@dataclass(frozen=True)
class SceneSpec:
    """A scene ready to read: band assets by common name, CRS, and the tile bounds in that CRS (metres).

    ``bounds`` is ``(left, bottom, right, top)`` of the tile (the full MGRS tile for Sentinel-2), the
    anchor of every output grid: the output's top-left corner is the tile's top-left corner.
    ``gdal_env``: the GDAL/AWS settings its hrefs need (from the provider profile: endpoint,
    requester-pays, ...), applied by the reader on top of ``ReaderConfig.gdal_env``.
    """

    id: str
    bands: Mapping[str, BandAsset]
    crs: str
    bounds: tuple[float, float, float, float]
    product_level: str = "l2a"
    datetime: datetime | None = None
    collection: str | None = None
    profile: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)
    gdal_env: Mapping[str, str] = field(default_factory=dict)
    item: Any = None  # the pystac.Item it came from, when there is one

    def geobox(self, resolution: float) -> GeoBox:
        """The scene's own grid at ``resolution`` metres, anchored on the tile's top-left corner."""
        left, bottom, right, top = self.bounds
        width = max(1, math.ceil(round((right - left) / resolution, 6)))
        height = max(1, math.ceil(round((top - bottom) / resolution, 6)))
        return GeoBox((height, width), Affine(resolution, 0.0, left, 0.0, -resolution, top), self.crs)

    def assets_for(self, bands: tuple[str, ...]) -> list[BandAsset]:
        """The assets of ``bands`` in that order; raises :class:`MissingBandError` naming what lacks."""
        missing = [b for b in bands if b not in self.bands]
        if missing:
            have = ", ".join(sorted(self.bands)) or "none"
            raise MissingBandError(
                f"scene {self.id} has no asset for band(s) {', '.join(missing)} that the model needs "
                f"(it has: {have}); choose a model whose bands the item has (e.g. a 4-band model) "
                "or a collection/profile that carries them (--profile)"
            )
        return [self.bands[b] for b in bands]
