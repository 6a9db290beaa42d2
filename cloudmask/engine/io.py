"""What the engine reads from and writes to: source and sink protocols, and their in-memory forms.

Contracts: ``PatchSource.read_rows`` is called from the producer thread only, top to bottom, and
returns a new array the engine owns (it normalises it in place). ``MaskSink.write_block`` is called
from the calling thread only, top to bottom, with arrays the sink may keep.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ..classes import NODATA


class PatchSource(Protocol):
    """Rows of a scene at model resolution: ``(bands, rows, width)`` float32 reflectance, NaN = nodata."""

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the scene on the model grid (pixels)."""
        ...

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (0 <= start < stop <= rows) as a new ``(bands, stop - start, cols)`` float32
        array in model band order that the engine owns and may change. Called from the producer thread
        only, top to bottom; a failed read raises (a :class:`~cloudmask.errors.ReadError` for rasters).

        A source may also take keywords the engine then uses (:class:`~cloudmask.reader.RowWindows`
        checks the signature): ``out`` (fill this array), ``cols`` (only these columns: the first
        strip is read in parts), ``affine`` (apply the model's affine normalisation while reading)
        and ``valid`` (set the valid-pixel mask); :class:`~cloudmask.reader.RasterSource` takes all four."""
        ...


class MaskSink(Protocol):
    """Receives finished row blocks of the mask, top to bottom."""

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Mask rows ``row : row + len(classes)``: ``classes`` ``(rows, cols)`` uint8 class values (255 nodata),
        ``probabilities`` ``(classes, rows, cols)`` uint8 percent or ``None``. Called from the thread that
        called :func:`~cloudmask.engine.stream_scene`, blocks contiguous and in order, each row once;
        the arrays are new for every call and the sink may keep them."""
        ...


class ArraySink:
    """Collects the mask (and ``classes`` probability bands, uint8 percent) in memory."""

    def __init__(self, height: int, width: int, probabilities: bool = False, classes: int = 3) -> None:
        self.classes = np.full((height, width), NODATA, np.uint8)
        self.probabilities = np.zeros((classes, height, width), np.uint8) if probabilities else None

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        self.classes[row : row + classes.shape[0]] = classes
        if self.probabilities is not None and probabilities is not None:
            self.probabilities[:, row : row + classes.shape[0]] = probabilities


class ArraySource:
    """A scene already in memory: ``(bands, rows, cols)`` reflectance, NaN where invalid."""

    def __init__(self, reflectance: np.ndarray) -> None:
        if reflectance.ndim != 3:
            raise ValueError(f"expected (bands, rows, cols), got shape {reflectance.shape}")
        self.data = reflectance

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.data.shape[1]), int(self.data.shape[2])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.data[:, start:stop], dtype=np.float32, copy=True)
