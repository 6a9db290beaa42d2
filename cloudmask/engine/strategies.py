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

from ..errors import CloudmaskError, ConfigError, NonFiniteOutputError
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


def check_finite(scores: np.ndarray, model: str) -> None:
    """Raise :class:`NonFiniteOutputError` when ``scores`` (the used part of one batch) hold NaN or ±inf.

    An argmax over NaN picks channel 0 (clear): a broken model would give a "100 % clear" mask. One
    sum per batch (a NaN or inf anywhere makes it non-finite); the exact count only when it is not.
    """
    if np.isfinite(scores.sum()):
        return
    bad = int(scores.size - np.count_nonzero(np.isfinite(scores)))
    if bad == 0:  # a float32 sum that overflowed: the scores themselves are finite
        return
    raise NonFiniteOutputError(
        f"model '{model}' gave {bad} non-finite score(s) (NaN or ±inf) of {scores.size} in one batch: its "
        "output cannot be turned into classes, so this scene is not masked (it would read as clear); check the "
        "model's graph and the card's normalisation on this scene's input"
    )


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

    def __init__(self, inner: PatchBlender | PatchClassBlender, n_cols: int, model: str = "") -> None:
        self.inner, self.n_cols, self.skipped, self.model = inner, n_cols, 0, model

    @property
    def is_done(self) -> bool:
        return self.inner.is_done

    def cut(self, msg: RowCut) -> list[Block]:
        self.skipped += self.n_cols - msg.expected
        return self.inner.cut(msg)

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]:
        check_finite(scores[: len(tasks)], self.model)
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
                                    self.layout.n_cols, self.card.name)

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
                                    self.layout.n_cols, self.card.name)


class _PixelBlenderAdapter:
    def __init__(self, inner: PixelBlender, model: str = "") -> None:
        self.inner, self.skipped, self.model = inner, 0, model

    @property
    def is_done(self) -> bool:
        return self.inner.is_done

    def cut(self, msg: StripCut) -> list[Block]:
        self.skipped += msg.rows * self.inner.width - msg.count
        return self.inner.cut(msg)

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]:
        check_finite(self.inner.to_cf(scores)[:, :filled], self.model)
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
        return _PixelBlenderAdapter(PixelBlender(self.card, self.width, n, probabilities, stats), self.card.name)

    def done(self, blender: Blender) -> int:
        assert isinstance(blender, _PixelBlenderAdapter)
        return blender.inner.stats.pixels + blender.skipped


#: Rows per pixel strip: within these bounds, a multiple of the lower one, and one strip's floats
#: (bands x rows x width x 4 B; two strips are in memory) at most :data:`PIXEL_STRIP_BYTES`. Long strips
#: line up with COG block rows (512 rows for Sentinel-2 COGs): each strip then decodes one block row, so
#: reads take as long strip after strip (with 128-row strips one strip in four decoded all and the device
#: waited for it). Short strips would make the reader decode the same compressed blocks again and again.
PIXEL_STRIP_ROWS = (128, 512)
PIXEL_STRIP_BYTES = 160 * 2**20


def pixel_strip_rows(block: int, width: int, bands: int = 1) -> int:
    """Rows per strip for pixel models (see :data:`PIXEL_STRIP_ROWS`): 512 for 6 bands of a 10,980-px tile
    (135 MB a strip), 256 for 10-13 bands, never fewer than 128 or two blocks' worth of pixels."""
    lo, hi = PIXEL_STRIP_ROWS
    fit = PIXEL_STRIP_BYTES // max(1, bands * width * 4) // lo * lo
    return max(lo, min(hi, max(fit, math.ceil(2 * block / max(1, width)))))


def first_rows(card: ModelCard, shape: Sequence[int], height: int, width: int, strip_rows: int | None = None) -> int:
    """Rows ``[0, n)`` the stream reads first (what a prefetch of the scene's first rows should cover):
    a pixel model's first strip, else the first 256 rows (at least a patch)."""
    if card.kind == "pixel":
        try:
            block, _ = pixel_block(shape, card.n_bands)
        except ValueError:  # make_strategy reports it
            block = PIXEL_STRIP_ROWS[0] * width
        return min(height, strip_rows or pixel_strip_rows(block, width, card.n_bands))
    return min(height, max(256, card.patch_size))


def make_strategy(card: ModelCard, shape: Sequence[int], height: int, width: int, margin: int, blend: str,
                  strip_rows: int | None = None) -> Strategy:
    """The strategy for ``card``'s kind, checked against the runners' input ``shape``."""
    if card.kind == "pixel":
        try:
            block, layout = pixel_block(shape, card.n_bands)
        except ValueError as err:
            raise CloudmaskError(f"runner shape does not match pixel model '{card.name}': {err}") from err
        rows = strip_rows or pixel_strip_rows(block, width, card.n_bands)
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
