"""Blenders: scores in, finished mask row blocks out. Plain objects, no threads (tested on their own).

A blender is told what the producer cut (:meth:`cut`), is fed the device's scores (:meth:`feed`) in
any order, and returns every row block that became final, top to bottom, as :class:`Block`s. It
is done when every block was returned. One blender per model kind:

* :class:`PatchBlender` (segmentation): weighted blending of overlapping patches into per-core-row
  accumulators; a row block is final when no patch can touch it any more;
* :class:`PixelBlender` (pixel models): scatters each pixel's class back to its place in its strip;
* :class:`PatchClassBlender` (patch classifiers): one mask pixel per patch, a row per patch row.

Mask values are class values (see :mod:`cloudmask.classes`), NODATA where there was no valid input.
The number of classes is that of the card's class table (highest class value + 1); several output
channels naming one class add their probabilities.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..classes import NODATA
from ..errors import CloudmaskError
from ..grid import PatchLayout
from ..models import ModelCard
from .messages import PatchTask, PixelRun, RowCut, StripCut, Task
from .stats import StreamStats


def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    e = np.exp(scores - scores.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


@dataclass(frozen=True, slots=True)
class Block:
    """Finished mask rows ``[row, row + classes.shape[0])``: classes uint8, probabilities uint8 percent or None."""

    row: int
    classes: np.ndarray
    probabilities: np.ndarray | None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float32."""
    out = np.negative(x, dtype=np.float32)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


class _ClassMerge:
    """Output channels -> mask classes: softmax (for logits) and the card's channel -> class sum.

    A one-channel model's channel is P(class) (sigmoid of it for ``output: logits``): its class where
    P > the card's threshold (default 0.5), else clear; the probabilities are ``1 - P`` (clear) and ``P``.
    """

    def __init__(self, card: ModelCard) -> None:
        self.index = card.class_index
        self.n = len(card.class_table)
        self.identity = len(self.index) == self.n and bool(np.array_equal(self.index, np.arange(self.n)))
        self.logits = card.output != "probabilities"
        self.single = card.one_channel
        self.threshold = np.float32(card.decision_threshold)

    def probabilities(self, scores: np.ndarray, axis: int) -> np.ndarray:
        """Class probabilities along ``axis`` (channels -> ``self.n`` classes)."""
        if self.single:
            p = _along(scores, axis, 0).astype(np.float32)
            if self.logits:
                p = sigmoid(p)
            shape = list(scores.shape)
            shape[axis] = self.n
            out = np.zeros(shape, np.float32)
            _along(out, axis, int(self.index[0]))[...] = p
            _along(out, axis, 0)[...] = 1.0 - p
            return out
        probs = softmax(scores, axis) if self.logits else scores
        if self.identity:
            return probs
        shape = list(probs.shape)
        shape[axis] = self.n
        out = np.zeros(shape, np.float32)
        for ch, cls in enumerate(self.index):
            _along(out, axis, int(cls))[...] += _along(probs, axis, ch)
        return out


    def decide(self, probs: np.ndarray, axis: int) -> np.ndarray:
        """Mask classes (uint8) from :meth:`probabilities` (or weighted sums of them) along ``axis``:
        argmax, or for a one-channel model its class where P > threshold x (P + clear), else clear."""
        if not self.single:
            if axis == 0:
                return argmax0(probs)
            return np.argmax(probs, axis=axis).astype(np.uint8)
        cls = int(self.index[0])
        p, clear = _along(probs, axis, cls), _along(probs, axis, 0)
        return np.where(p > self.threshold * (p + clear), np.uint8(cls), np.uint8(0)).astype(np.uint8)


def class_scores(card: ModelCard, scores: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A model's raw output along ``axis`` -> (mask classes uint8, class probabilities along ``axis``), as the
    blenders decide (softmax or sigmoid, channels summed per class, one-channel threshold)."""
    merge = _ClassMerge(card)
    probs = merge.probabilities(np.asarray(scores, np.float32), axis)
    return merge.decide(probs, axis), probs


def _along(a: np.ndarray, axis: int, i: int) -> np.ndarray:
    sl: list[slice | int] = [slice(None)] * a.ndim
    sl[axis] = i
    return a[tuple(sl)]


class PatchBlender:
    """Blends overlapping segmentation patches (weights from :func:`~cloudmask.grid.blend_weights`)."""

    def __init__(
        self, layout: PatchLayout, card: ModelCard, weights: np.ndarray, probabilities: bool, stats: StreamStats
    ) -> None:
        self.layout, self.weights, self.want_probs, self.stats = layout, weights, probabilities, stats
        self.merge = _ClassMerge(card)
        # the weight sum only normalises probabilities: the argmax of the weighted sum does not need it
        self.channels = self.merge.n + 1 if probabilities else self.merge.n
        self._weighted = np.empty((self.channels, layout.patch, layout.patch), np.float32)
        if probabilities:
            self._weighted[self.merge.n] = weights
        self.width = layout.n_cols * layout.stride
        self.acc: dict[int, np.ndarray] = {}
        self.expected: dict[int, int] = {}
        self.valid: dict[int, np.ndarray] = {}
        self.done: dict[int, int] = {}
        self.next_block = 0

    @property
    def is_done(self) -> bool:
        return self.next_block >= self.layout.n_rows

    def cut(self, msg: RowCut) -> list[Block]:
        self.expected[msg.row] = msg.expected
        self.valid[msg.row] = msg.valid
        self.done.setdefault(msg.row, 0)
        return self._ready()

    def feed(self, tasks: Sequence[Task], scores: np.ndarray) -> list[Block]:
        """Blend the scores ``(>= len(tasks), K, patch, patch)`` of ``tasks``; returns the blocks now final."""
        t0 = time.perf_counter()
        n = self.merge.n
        w = self.weights
        weighted = self._weighted  # reused: the weight channel (probabilities only) is set once
        fused = self.merge.logits and self.merge.identity
        probs = scores[: len(tasks)] if fused else self.merge.probabilities(scores[: len(tasks)], axis=1)
        for task, pr in zip(tasks, probs, strict=True):
            assert isinstance(task, PatchTask)
            if fused:  # softmax and weighting in one: exp(s - max) * (w / sum exp), no separate division
                np.subtract(pr, pr.max(axis=0), out=weighted[:n])
                np.exp(weighted[:n], out=weighted[:n])
                weighted[:n] *= w / weighted[:n].sum(axis=0)
            else:
                np.multiply(pr, w, out=weighted[:n])
            self._accumulate(task, weighted)
            self.done[task.row] = self.done.get(task.row, 0) + 1
        self.stats.patches += len(tasks)
        self.stats.add("blend", time.perf_counter() - t0)
        return self._ready()

    def _block(self, k: int) -> np.ndarray:
        if k not in self.acc:
            self.acc[k] = np.zeros((self.channels, self.layout.stride, self.width), np.float32)
        return self.acc[k]

    def _accumulate(self, task: PatchTask, weighted: np.ndarray) -> None:
        lay = self.layout
        s, m, p = lay.stride, lay.margin, lay.patch
        c0 = task.col * s - m
        pc0, pc1 = max(0, -c0), min(p, self.width - c0)
        dc0 = c0 + pc0
        # patch rows [0, m) -> block row-1 rows [s-m, s); [m, m+s) -> block row; [m+s, p) -> block row+1 rows [0, m)
        parts = ((task.row - 1, 0, m, s - m), (task.row, m, m + s, 0), (task.row + 1, m + s, p, 0))
        for k, a, b, dst in parts:
            if b <= a or not 0 <= k < lay.n_rows:
                continue
            tgt = self._block(k)
            tgt[:, dst : dst + (b - a), dc0 : dc0 + (pc1 - pc0)] += weighted[:, a:b, pc0:pc1]

    def _row_complete(self, r: int) -> bool:
        return r in self.expected and self.done.get(r, 0) >= self.expected[r]

    def _ready(self) -> list[Block]:
        out = []
        lay = self.layout
        while self.next_block < lay.n_rows and all(
            self._row_complete(r) for r in (self.next_block - 1, self.next_block, self.next_block + 1)
            if 0 <= r < lay.n_rows
        ):
            out.append(self._finish(self.next_block, self.acc.pop(self.next_block, None)))
            self.next_block += 1
        return out

    def _finish(self, k: int, accumulated: np.ndarray | None) -> Block:
        t0 = time.perf_counter()
        lay, n = self.layout, self.merge.n
        r0, r1 = lay.block_rows(k)
        rows = r1 - r0
        valid = self.valid.pop(k)
        if accumulated is None:
            classes = np.full((rows, lay.width), NODATA, np.uint8)
            probs = np.zeros((n, rows, lay.width), np.uint8) if self.want_probs else None
        else:
            a = accumulated[:, :rows, : lay.width]
            classes = self.merge.decide(a[:n], 0)
            classes[~valid] = NODATA
            probs = None
            if self.want_probs:
                wsum = np.where(a[n] > 0, a[n], 1.0)
                probs = np.rint(100.0 * a[:n] / wsum).astype(np.uint8)
                probs[:, ~valid] = 0
        self.stats.add("blend", time.perf_counter() - t0)
        return Block(r0, classes, probs)


def argmax0(a: np.ndarray) -> np.ndarray:
    """``np.argmax(a, axis=0)`` as uint8 (ties to the lower index), for a few channels: a pass per
    channel over contiguous planes (numpy's strided argmax over the first axis is ~5x slower)."""
    best = a[0].copy()
    out = np.zeros(a.shape[1:], np.uint8)
    more = np.empty(a.shape[1:], bool)
    for k in range(1, a.shape[0]):
        np.greater(a[k], best, out=more)
        np.copyto(out, np.uint8(k), where=more)
        np.maximum(best, a[k], out=best)
    return out


def pixel_scores(scores: np.ndarray) -> np.ndarray:
    """A pixel runner's output as ``(K, N)``: from ``[N, K]``, ``[N, K, 1, 1]`` or a folded ``[1, K, H, W]``."""
    if scores.ndim == 2:
        return scores.T
    if scores.ndim == 4 and scores.shape[2:] == (1, 1):
        return scores[:, :, 0, 0].T
    if scores.ndim == 4 and scores.shape[0] == 1:
        return scores.reshape(scores.shape[1], -1)
    raise CloudmaskError(
        f"a pixel model must output [N, K], [N, K, 1, 1] or folded [1, K, H, W] scores, got {scores.shape}"
    )


class PixelBlender:
    """Scatters per-pixel classes back into their strips; a strip is final when all its valid pixels are in.

    Without probabilities the classes are the argmax of the scores as they come (softmax does not change
    it; for two channels one comparison), written straight into the strip: a slice where the strip is
    all valid, one indexed store otherwise.
    """

    def __init__(self, card: ModelCard, width: int, n_strips: int, probabilities: bool, stats: StreamStats,
                 to_channels_first: Callable[[np.ndarray], np.ndarray] = pixel_scores) -> None:
        self.merge = _ClassMerge(card)
        self.width, self.n_strips, self.want_probs, self.stats = width, n_strips, probabilities, stats
        self.to_cf = to_channels_first
        # strip -> (first row, valid index or None (all valid), valid count, classes, probabilities)
        self.strips: dict[int, tuple[int, np.ndarray | None, int, np.ndarray, np.ndarray | None]] = {}
        self.filled: dict[int, int] = {}
        self.next_strip = 0

    @property
    def is_done(self) -> bool:
        return self.next_strip >= self.n_strips

    def cut(self, msg: StripCut) -> list[Block]:
        size = msg.rows * self.width
        # every pixel valid (no index): each one is written by a run, no NODATA fill first
        classes = np.empty(size, np.uint8) if msg.index is None else np.full(size, NODATA, np.uint8)
        probs = np.zeros((self.merge.n, size), np.uint8) if self.want_probs else None
        self.strips[msg.strip] = (msg.row, msg.index, msg.count, classes, probs)
        self.filled[msg.strip] = 0
        return self._ready()

    def _classes(self, cf: np.ndarray) -> np.ndarray:
        """Classes (uint8) of channels-first scores ``(K, N)`` without probabilities."""
        if self.merge.identity and not self.merge.single:  # softmax keeps the order: argmax of the scores
            if cf.shape[0] == 2:
                return np.greater(cf[1], cf[0]).view(np.uint8)  # ties to class 0, as argmax
            if cf.strides[1] == cf.itemsize:  # contiguous channel planes (folded output)
                return argmax0(cf)
            return np.argmax(cf, axis=0).astype(np.uint8)
        return self.merge.decide(self.merge.probabilities(cf, axis=0), 0)

    def feed(self, tasks: Sequence[Task], scores: np.ndarray, filled: int) -> list[Block]:
        """Scatter the classes of the first ``filled`` pixels of a block to the runs ``tasks`` name."""
        t0 = time.perf_counter()
        cf = self.to_cf(scores)[:, :filled]
        pct = None
        if self.want_probs:
            probs = self.merge.probabilities(cf, axis=0)
            cls = self.merge.decide(probs, 0)
            pct = np.rint(100.0 * probs).astype(np.uint8)
        else:
            cls = self._classes(cf)
        for run in tasks:
            assert isinstance(run, PixelRun)
            _, index, _, classes, sprobs = self.strips[run.strip]
            src = slice(run.offset, run.offset + run.count)
            where: slice | np.ndarray = (slice(run.start, run.start + run.count) if index is None
                                         else index[run.start : run.start + run.count])
            classes[where] = cls[src]
            if sprobs is not None and pct is not None:
                sprobs[:, where] = pct[:, src]
            self.filled[run.strip] += run.count
        self.stats.pixels += filled
        self.stats.add("blend", time.perf_counter() - t0)
        return self._ready()

    def _ready(self) -> list[Block]:
        out = []
        while self.next_strip in self.strips and self.filled[self.next_strip] >= self.strips[self.next_strip][2]:
            row, _, _, classes, probs = self.strips.pop(self.next_strip)
            del self.filled[self.next_strip]
            rows = classes.size // self.width
            out.append(Block(row, classes.reshape(rows, self.width),
                             None if probs is None else probs.reshape(-1, rows, self.width)))
            self.next_strip += 1
        return out


class PatchClassBlender:
    """One mask pixel per patch: the patch's class, NODATA for patches without a valid pixel.

    A patch row's scores may come before or after its :class:`RowCut`; the row is final when both
    the cut and all the patches it names are in.
    """

    def __init__(self, layout: PatchLayout, card: ModelCard, probabilities: bool, stats: StreamStats) -> None:
        self.layout, self.want_probs, self.stats = layout, probabilities, stats
        self.merge = _ClassMerge(card)
        self.channels = len(card.classes)
        self.rows: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.expected: dict[int, int] = {}
        self.fed: dict[int, int] = {}
        self.next_row = 0

    @property
    def is_done(self) -> bool:
        return self.next_row >= self.layout.n_rows

    def _row(self, row: int) -> tuple[np.ndarray, np.ndarray | None]:
        if row not in self.rows:
            classes = np.full((1, self.layout.n_cols), NODATA, np.uint8)
            probs = np.zeros((self.merge.n, 1, self.layout.n_cols), np.uint8) if self.want_probs else None
            self.rows[row] = (classes, probs)
        return self.rows[row]

    def cut(self, msg: RowCut) -> list[Block]:
        self._row(msg.row)
        self.expected[msg.row] = msg.expected
        return self._ready()

    def feed(self, tasks: Sequence[Task], scores: np.ndarray) -> list[Block]:
        """Classes of patches from ``[>= len(tasks), K]`` (or ``[B, K, 1, 1]``) scores, or a patch-stacked
        classifier's ``[1, k*K, 1, 1]`` (patch ``i``'s scores in channels ``i*K .. (i+1)*K - 1``)."""
        t0 = time.perf_counter()
        if scores.ndim not in (2, 4) or scores.shape[2:] not in ((), (1, 1)) or scores.size % self.channels:
            raise CloudmaskError(f"a patch classifier must output [B, K] scores (K = {self.channels}), got "
                                 f"{scores.shape}")
        sc = scores.reshape(-1, self.channels)[: len(tasks)]
        probs = self.merge.probabilities(sc, axis=1)
        cls = self.merge.decide(probs, 1)
        for k, task in enumerate(tasks):
            assert isinstance(task, PatchTask)
            classes, p = self._row(task.row)
            classes[0, task.col] = cls[k]
            if p is not None:
                p[:, 0, task.col] = np.rint(100.0 * probs[k]).astype(np.uint8)
            self.fed[task.row] = self.fed.get(task.row, 0) + 1
        self.stats.patches += len(tasks)
        self.stats.add("blend", time.perf_counter() - t0)
        return self._ready()

    def _ready(self) -> list[Block]:
        out = []
        r = self.next_row
        while r in self.expected and self.fed.get(r, 0) >= self.expected[r]:
            classes, probs = self.rows.pop(r)
            del self.expected[r]
            self.fed.pop(r, None)
            out.append(Block(r, classes, probs))
            r = self.next_row = r + 1
        return out
