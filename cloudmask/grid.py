"""Pure patch geometry: where patches go, how they overlap, how they are blended.

No I/O. Coordinates are pixels of the scene grid at model resolution, rows first. A layout tiles the
scene with *cores* of ``stride`` pixels; each patch is its core plus ``margin`` pixels on every side
(``patch = stride + 2 * margin``). Patch ``(i, j)`` covers rows ``i*stride - margin`` to
``(i+1)*stride + margin``; rows outside the scene are filled by mirroring the scene (symmetric padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Blend = Literal["tukey", "linear", "hard"]
#: Floor of every blend weight, so that pixels seen only by a patch's taper still get a vote.
WEIGHT_FLOOR = 1e-3


#: Default halo, pixels each side (measured: benchmarks/seams.py); smaller patches get at most patch // 3.
DEFAULT_MARGIN = 26


def max_margin(patch: int) -> int:
    """The widest halo (pixels each side) a ``patch``-px patch allows: the core must be at least as wide
    as the halo, so a patch only overlaps its direct neighbours (which the blender relies on)."""
    return patch // 3


@dataclass(frozen=True)
class PatchLayout:
    """Patches of ``patch`` pixels with ``margin`` pixels of halo on each side over a ``height x width`` scene."""

    height: int
    width: int
    patch: int
    margin: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"scene must have at least one pixel, got {self.height}x{self.width}")
        if not 0 <= self.margin <= max_margin(self.patch):
            raise ValueError(f"margin {self.margin} must satisfy 0 <= margin <= patch // 3 ({max_margin(self.patch)} "
                             f"for {self.patch}-px patches): a patch's halo may only reach its neighbours' cores")

    @property
    def stride(self) -> int:
        """Core size and step between patch origins, pixels."""
        return self.patch - 2 * self.margin

    @property
    def n_rows(self) -> int:
        return max(1, math.ceil(self.height / self.stride))

    @property
    def n_cols(self) -> int:
        return max(1, math.ceil(self.width / self.stride))

    @property
    def n_patches(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def padded_width(self) -> int:
        """Width of a row strip: all cores plus a margin on each side."""
        return self.n_cols * self.stride + 2 * self.margin

    def origin(self, i: int, j: int) -> tuple[int, int]:
        """Top-left pixel (row, col) of patch ``(i, j)`` in scene coordinates (may be negative)."""
        return i * self.stride - self.margin, j * self.stride - self.margin

    def strip_rows(self, i: int) -> np.ndarray:
        """Scene rows that patch row ``i`` reads, mirrored into the scene (length ``patch``)."""
        start = i * self.stride - self.margin
        return reflect_index(np.arange(start, start + self.patch), self.height)

    def strip_cols(self) -> np.ndarray:
        """Scene columns of a full strip, mirrored into the scene (length ``padded_width``)."""
        return reflect_index(np.arange(-self.margin, self.padded_width - self.margin), self.width)

    def block_rows(self, i: int) -> tuple[int, int]:
        """Scene rows ``[start, stop)`` of core row ``i``, clipped to the scene."""
        return i * self.stride, min((i + 1) * self.stride, self.height)

    def redundancy(self) -> float:
        """Pixels sent to the model per scene pixel (1.0 = no overlap, no padding)."""
        return self.n_patches * self.patch**2 / (self.height * self.width)


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror indices into ``[0, n)`` like ``numpy.pad(mode='symmetric')``, for any distance."""
    period = 2 * n
    k = np.mod(idx, period)
    return np.where(k >= n, period - 1 - k, k)


def blend_weights(patch: int, margin: int, kind: Blend = "tukey") -> np.ndarray:
    """2-D blend weights ``(patch, patch)`` float32 in ``[WEIGHT_FLOOR, 1]``.

    ``tukey``: raised-cosine taper over the ``2*margin`` pixels where neighbours overlap, flat in
    between (neighbouring tapers add up to exactly 1); ``linear``: the same taper as a straight ramp; ``hard``: 1 on the core, the floor in the margins
    (a hard cut at core borders).
    """
    taper = 2 * margin
    if kind == "hard" or taper == 0:
        w1 = np.full(patch, WEIGHT_FLOOR, np.float64)
        w1[margin : patch - margin] = 1.0
    elif kind in ("tukey", "linear"):
        x = (np.arange(taper) + 0.5) / taper
        ramp = 0.5 * (1.0 - np.cos(np.pi * x)) if kind == "tukey" else x
        w1 = np.ones(patch)
        w1[:taper] = ramp
        w1[patch - taper :] = ramp[::-1]
    else:
        raise ValueError(f"unknown blend {kind!r}: use tukey, linear or hard")
    w1 = np.maximum(w1, WEIGHT_FLOOR)
    return np.outer(w1, w1).astype(np.float32)


def seam_index(mask: np.ndarray, layout: PatchLayout, valid: np.ndarray | None = None) -> float:
    """Rate of class changes across core borders divided by the rate across lines through patch centres.

    1.0 means core borders are invisible; hard-cut tiles score well above 1. Pairs touching nodata
    (``valid`` false) are ignored. Returns ``nan`` when there is no centre-line change at all.
    """
    ok = np.ones(mask.shape, bool) if valid is None else valid
    s, h, w = layout.stride, layout.height, layout.width
    borders_r = [k * s for k in range(1, layout.n_rows) if k * s < h]
    borders_c = [k * s for k in range(1, layout.n_cols) if k * s < w]
    centres_r = [k * s + s // 2 for k in range(layout.n_rows) if 0 < k * s + s // 2 < h]
    centres_c = [k * s + s // 2 for k in range(layout.n_cols) if 0 < k * s + s // 2 < w]

    def rate(rows: list[int], cols: list[int]) -> float:
        changes = pairs = 0
        for r in rows:
            v = ok[r - 1] & ok[r]
            changes += int(((mask[r - 1] != mask[r]) & v).sum())
            pairs += int(v.sum())
        for c in cols:
            v = ok[:, c - 1] & ok[:, c]
            changes += int(((mask[:, c - 1] != mask[:, c]) & v).sum())
            pairs += int(v.sum())
        return changes / pairs if pairs else float("nan")

    centre = rate(centres_r, centres_c)
    return rate(borders_r, borders_c) / centre if centre > 0 else float("nan")
