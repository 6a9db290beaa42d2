"""One cutting/blending strategy per model kind: what the producer cuts, what the blender assembles.

============== ============================== ================================ ==============================
kind           runner input                   producer                         blender / output grid
============== ============================== ================================ ==============================
segmentation   ``[B, C, P, P]``               patches with halo, mirrored      weighted blend; scene grid
pixel          ``[N, C]``, ``[N, C, 1, 1]``   valid pixels packed densely in   scatter back; scene grid
               or folded ``[1, C, H, W]``     blocks of ``N`` (``H*W``)
patch-classif. ``[B, C, P, P]``               patches without halo             one pixel per patch; grid
                                                                               zoomed out by ``P``
============== ============================== ================================ ==============================
"""

from __future__ import annotations

import math
import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import CloudmaskError, ConfigError
from ..grid import DEFAULT_MARGIN, PatchLayout, blend_weights, max_margin
from ..models import ModelCard
from .blender import Block, PatchBlender, PatchClassBlender, PixelBlender
from .control import BufferPool, Control
from .io import PatchSource
from .messages import RowCut, StripCut, Task
from .producer import PatchProducer, PixelProducer, Producer, pixel_block
from .stats import StreamStats


class Blender(Protocol):
    """Scores in, finished row blocks out (see :mod:`cloudmask.engine.blender`)."""

    @property
    def is_done(self) -> bool: ...

    def cut(self, msg: Any) -> list[Block]: ...

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]: ...


class Strategy(Protocol):
    """How one model kind is cut into device calls and assembled into a mask."""

    unit: str

    @property
    def per_call(self) -> int: ...

    @property
    def total(self) -> int: ...

    def output_shape(self) -> tuple[int, int]: ...

    def producer(self, source: PatchSource, control: Control, in_q: queue.Queue[Any], out_q: queue.Queue[Any],
                 pool: BufferPool, n_devices: int) -> Producer: ...

    def blender(self, stats: StreamStats, probabilities: bool) -> Blender: ...

    def done(self, blender: Blender) -> int: ...


def _check_patch_shape(card: ModelCard, shape: Sequence[int]) -> int:
    """Patches per call of a patch runner's input ``shape``: its batch, or ``k`` for a patch-stacked
    classifier's ``[1, k*C, p, p]`` (card field ``patches_per_call``)."""
    from ..runtime.shapes import stack_of

    dims = tuple(int(v) for v in shape)
    stack = stack_of(card) if card.kind == "patch-classifier" else None
    if stack is not None:
        if dims != (1, stack * card.n_bands, card.patch_size, card.patch_size):
            raise CloudmaskError(
                f"runner shape {dims} does not match patch-stacked model card '{card.name}' "
                f"([1, {stack} x {card.n_bands} bands, {card.patch_size}, {card.patch_size}])"
            )
        return stack
    if len(dims) != 4 or dims[1:] != (card.n_bands, card.patch_size, card.patch_size):
        raise CloudmaskError(
            f"runner shape {dims} does not match model card '{card.name}' "
            f"({card.n_bands} bands, {card.patch_size} px patches)"
        )
    return dims[0]


class _PatchBlenderAdapter:
    """Gives patch blenders the common ``feed(tasks, scores, filled)`` form and counts progress."""

    def __init__(self, inner: PatchBlender | PatchClassBlender, n_cols: int) -> None:
        self.inner, self.n_cols, self.skipped = inner, n_cols, 0

    @property
    def is_done(self) -> bool:
        return self.inner.is_done

    def cut(self, msg: RowCut) -> list[Block]:
        self.skipped += self.n_cols - msg.expected
        return self.inner.cut(msg)

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]:
        return self.inner.feed(tasks, scores)


@dataclass
class SegmentationStrategy:
    """Patches with a halo, blended where neighbours overlap."""

    card: ModelCard
    layout: PatchLayout
    batch: int
    blend: str
    unit: str = "patches"

    @property
    def per_call(self) -> int:
        return self.batch

    @property
    def total(self) -> int:
        return self.layout.n_patches

    def output_shape(self) -> tuple[int, int]:
        return self.layout.height, self.layout.width

    def producer(self, source: PatchSource, control: Control, in_q: queue.Queue[Any], out_q: queue.Queue[Any],
                 pool: BufferPool, n_devices: int) -> Producer:
        return PatchProducer(source, self.card, control, in_q, out_q, pool, n_devices, layout=self.layout,
                             batch=self.batch)

    def blender(self, stats: StreamStats, probabilities: bool) -> Blender:
        weights = blend_weights(self.layout.patch, self.layout.margin, self.blend)  # type: ignore[arg-type]
        return _PatchBlenderAdapter(PatchBlender(self.layout, self.card, weights, probabilities, stats),
                                    self.layout.n_cols)

    def done(self, blender: Blender) -> int:
        assert isinstance(blender, _PatchBlenderAdapter)
        return blender.inner.stats.patches + blender.skipped


@dataclass
class PatchClassifierStrategy(SegmentationStrategy):
    """Patches without halo; one label per patch, written as one pixel per patch."""

    def output_shape(self) -> tuple[int, int]:
        return self.layout.n_rows, self.layout.n_cols

    def blender(self, stats: StreamStats, probabilities: bool) -> Blender:
        return _PatchBlenderAdapter(PatchClassBlender(self.layout, self.card, probabilities, stats),
                                    self.layout.n_cols)


class _PixelBlenderAdapter:
    def __init__(self, inner: PixelBlender) -> None:
        self.inner, self.skipped = inner, 0

    @property
    def is_done(self) -> bool:
        return self.inner.is_done

    def cut(self, msg: StripCut) -> list[Block]:
        self.skipped += msg.rows * self.inner.width - msg.index.size
        return self.inner.cut(msg)

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]:
        return self.inner.feed(tasks, scores, filled)


@dataclass
class PixelStrategy:
    """Valid pixels packed densely into blocks of the runner's size, classes scattered back."""

    card: ModelCard
    height: int
    width: int
    block: int
    layout: str
    strip_rows: int
    unit: str = "pixels"

    @property
    def per_call(self) -> int:
        return self.block

    @property
    def total(self) -> int:
        return self.height * self.width

    def output_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def producer(self, source: PatchSource, control: Control, in_q: queue.Queue[Any], out_q: queue.Queue[Any],
                 pool: BufferPool, n_devices: int) -> Producer:
        return PixelProducer(source, self.card, control, in_q, out_q, pool, n_devices, block=self.block,
                             layout=self.layout, strip_rows=self.strip_rows)

    def blender(self, stats: StreamStats, probabilities: bool) -> Blender:
        n = PixelProducer.n_strips(self.height, self.strip_rows)
        return _PixelBlenderAdapter(PixelBlender(self.card, self.width, n, probabilities, stats))

    def done(self, blender: Blender) -> int:
        assert isinstance(blender, _PixelBlenderAdapter)
        return blender.inner.stats.pixels + blender.skipped


#: Rows per pixel strip: enough for two blocks, within these bounds (memory ~ bands x rows x width x 4 B:
#: 56 MB for 10 bands of a 10,980-px-wide tile at 128 rows). Short strips would make the reader decode
#: the same compressed blocks again and again.
PIXEL_STRIP_ROWS = (128, 256)


def pixel_strip_rows(block: int, width: int) -> int:
    """Rows per strip for pixel models: two blocks' worth of pixels, clamped to :data:`PIXEL_STRIP_ROWS`."""
    lo, hi = PIXEL_STRIP_ROWS
    return max(lo, min(hi, math.ceil(2 * block / max(1, width))))


def make_strategy(card: ModelCard, shape: Sequence[int], height: int, width: int, margin: int, blend: str,
                  strip_rows: int | None = None) -> Strategy:
    """The strategy for ``card``'s kind, checked against the runners' input ``shape``."""
    if card.kind == "pixel":
        try:
            block, layout = pixel_block(shape, card.n_bands)
        except ValueError as err:
            raise CloudmaskError(f"runner shape does not match pixel model '{card.name}': {err}") from err
        rows = strip_rows or pixel_strip_rows(block, width)
        return PixelStrategy(card, height, width, block, layout, rows)
    batch = _check_patch_shape(card, shape)
    if card.kind == "patch-classifier":
        return PatchClassifierStrategy(card, PatchLayout(height, width, card.patch_size, 0), batch, "hard")
    if margin == DEFAULT_MARGIN and margin > max_margin(card.patch_size):  # the default, for a small patch
        margin = max_margin(card.patch_size)
    if margin > max_margin(card.patch_size):
        raise ConfigError(f"a halo of {margin} px is too wide for {card.name}'s {card.patch_size}-px patches: use at "
                          f"most {max_margin(card.patch_size)} (--margin, StreamConfig(margin=...))")
    return SegmentationStrategy(card, PatchLayout(height, width, card.patch_size, margin), batch, blend)


def output_shape(card: ModelCard, height: int, width: int) -> tuple[int, int]:
    """Mask shape for a scene of ``height x width`` model-resolution pixels: patch resolution for patch classifiers."""
    if card.kind == "patch-classifier":
        return math.ceil(height / card.patch_size), math.ceil(width / card.patch_size)
    return height, width


def output_geobox(card: ModelCard, geobox: Any) -> Any:
    """The mask's grid for a scene on ``geobox`` (odc-geo): the same, or zoomed out by the patch size
    for patch classifiers (one pixel per patch, aligned with the scene's corner)."""
    if card.kind == "patch-classifier":
        return geobox.zoom_out(card.patch_size)
    return geobox
