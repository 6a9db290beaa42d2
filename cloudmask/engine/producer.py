"""The producer thread: read the scene strip by strip (each pixel once), normalise, cut, batch.

Two cutters share the plumbing:

* :class:`PatchProducer` (segmentation and patch classifiers): mirrors rows and columns at the
  scene's edges, cuts each row strip into the layout's patches, drops patches without a valid pixel,
  and groups patches into the runner's batch;
* :class:`PixelProducer` (pixel models): packs only the valid pixels of each strip, densely, into
  blocks of the runner's size; a block may span strips, so the device sees
  ``ceil(valid pixels / block)`` calls and only the last block is partly filled.

Batch arrays come from a :class:`~cloudmask.engine.control.BufferPool` (preallocated, recycled by the
device threads); each sample is copied once, from the normalised strip into the batch.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..grid import PatchLayout
from ..models import ModelCard
from ..priority import lower_thread_priority
from .control import Abort, BufferPool, Control
from .io import PatchSource
from .messages import Batch, PatchTask, PixelRun, RowCut, StripCut
from .stats import StreamStats

#: Column parts the first strip of a scene is read in (the device starts after the first part).
FIRST_STRIP_PARTS = 4


class Producer:
    """Base: reads through ``source``, sends :class:`Batch` to ``in_q`` and cuts to ``out_q``."""

    def __init__(self, source: PatchSource, card: ModelCard, control: Control, in_q: queue.Queue[Any],
                 out_q: queue.Queue[Any], pool: BufferPool, n_devices: int) -> None:
        self.source, self.card, self.control = source, card, control
        self.in_q, self.out_q, self.pool, self.n_devices = in_q, out_q, pool, n_devices
        self.stats = StreamStats()

    def run(self) -> None:
        """Thread body: cut the scene, then tell every device thread to stop (``None``)."""
        lower_thread_priority()  # the device threads come first when a call returns
        try:
            self.cut()
        except Abort:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            self.control.fail(err)
        finally:
            for _ in range(self.n_devices):
                try:
                    self.control.put(self.in_q, None)
                except Abort:
                    break

    def cut(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PatchProducer(Producer):
    """Cuts row strips into the patches of ``layout`` and batches them ``batch`` at a time."""

    def __init__(self, *args: Any, layout: PatchLayout, batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layout, self.batch = layout, batch

    def cut(self) -> None:
        """Each strip's rows come from :class:`~cloudmask.reader.RowWindows` (read and normalised ahead,
        on another thread, into preallocated buffers; the first strip in column parts, so the device
        starts after a part of it is read); patches are views into the strip except at the mirrored
        scene edges, and are copied once, into the batch."""
        from ..reader import RowWindows  # generic over any PatchSource; imported late (rasterio, dask)

        lay = self.layout
        p, s, m, w = lay.patch, lay.stride, lay.margin, lay.width
        cols = lay.strip_cols()
        strips = [lay.strip_rows(i) for i in range(lay.n_rows)]
        windows = [(int(r.min()), int(r.max()) + 1) for r in strips]
        reader = RowWindows(self.source, windows, prepare=self._normalise, first_parts=FIRST_STRIP_PARTS,
                            fold=self.card.read_affine)
        pending: list[tuple[PatchTask, np.ndarray]] = []
        t_wait = time.perf_counter()
        for i, (data, valid) in enumerate(reader):
            t0 = time.perf_counter()
            self.stats.add("read_wait", t0 - t_wait)
            lo = windows[i][0]
            local = strips[i] - lo
            l0, l1 = int(local.min()), int(local.max()) + 1  # mirrored rows repeat rows of this range
            inside = bool(np.all(np.diff(local) == 1))
            done: list[int] = []
            waited = 0.0  # for columns of the first strip still being read: read_wait, not cut
            for j in range(lay.n_cols):
                c0 = j * s - m
                if c0 >= 0 and c0 + p <= w:
                    k0, k1, idx = c0, c0 + p, None
                else:  # mirrored columns at the scene's left and right edges
                    idx = cols[j * s : j * s + p]
                    k0, k1 = int(idx.min()), int(idx.max()) + 1
                if i == 0:
                    tw = time.perf_counter()
                    reader.wait_cols(k1)
                    waited += time.perf_counter() - tw
                if not valid[l0:l1, k0:k1].any():
                    self.stats.skipped += 1
                    continue
                if idx is None:
                    patch = data[:, l0:l1, k0:k1] if inside else data[:, local, k0:k1]
                else:
                    part = data[:, l0:l1, k0:k1] if inside else data[:, local, k0:k1]
                    patch = part[:, :, idx - k0]
                done.append(j)
                pending.append((PatchTask(i, j), patch))
                if len(pending) == self.batch:
                    self.stats.add("cut", time.perf_counter() - t0 - waited)
                    self.stats.add("read_wait", waited)
                    self._emit(pending)
                    pending, waited = [], 0.0
                    t0 = time.perf_counter()
            tw = time.perf_counter()
            reader.wait_cols(w)
            waited += time.perf_counter() - tw
            r0, r1 = lay.block_rows(i)
            block_valid = valid[r0 - lo : r1 - lo].copy()
            self.stats.add("cut", time.perf_counter() - t0 - waited)
            self.stats.add("read_wait", waited)
            self.control.put(self.out_q, RowCut(i, len(done), tuple(done), block_valid))
            # patches left for the next batch are views of this window's buffer, which the reader refills
            # with window i + 2 while window i + 1 is cut: copy them now (at most batch - 1 patches)
            pending = [(t, np.array(patch)) for t, patch in pending]
            t_wait = time.perf_counter()
        if pending:
            self._emit(pending)
        self.stats.add("read", reader.seconds["read"])
        self.stats.add("normalise", reader.seconds["prepare"])

    def _normalise(self, data: np.ndarray) -> np.ndarray:
        return self.card.normalise(data, out=data)

    def _emit(self, tasks: list[tuple[PatchTask, np.ndarray]]) -> None:
        arr = self.pool.take()
        t0 = time.perf_counter()
        # [B, C, p, p], or a patch-stacked classifier's [1, k*C, p, p]: the same memory as [k, C, p, p]
        view = arr.reshape(self.batch, -1, *arr.shape[2:])
        for k, (_, patch) in enumerate(tasks):
            view[k] = patch
        if len(tasks) < self.batch:
            view[len(tasks) :] = 0.0
        self.stats.add("cut", time.perf_counter() - t0)
        self.control.put(self.in_q, Batch([t for t, _ in tasks], arr, len(tasks)))


class PixelProducer(Producer):
    """Packs the valid pixels of strips of ``strip_rows`` rows densely into blocks of ``block`` pixels.

    ``layout`` is how a block sits in the runner's input: ``"nc"`` (``[N, C]`` or ``[N, C, 1, 1]``) or
    ``"folded"`` (``[1, C, H, W]``, pixel ``i`` at row ``i // W``, column ``i % W``).
    """

    def __init__(self, *args: Any, block: int, layout: str, strip_rows: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.block, self.layout, self.strip_rows = block, layout, strip_rows

    @staticmethod
    def n_strips(height: int, strip_rows: int) -> int:
        return max(1, math.ceil(height / strip_rows))

    def _view(self, arr: np.ndarray) -> np.ndarray:
        """The batch array as ``(C, block)`` (folded) or ``(block, C)`` (nc) without copying."""
        c = self.card.n_bands
        return arr.reshape(c, self.block) if self.layout == "folded" else arr.reshape(self.block, c)

    def cut(self) -> None:
        """Strips come from :class:`~cloudmask.reader.RowWindows`: read on another thread while the
        previous strip is packed, the card's affine normalisation folded into the DN scaling and the
        valid mask set by the source (no pass over the floats); valid pixels are copied once, from the
        strip into the block (plain slices where the strip is all valid, one gather otherwise)."""
        from ..reader import RowWindows  # generic over any PatchSource; imported late (rasterio, dask)

        h, _ = self.source.shape
        rows = self.strip_rows
        windows = [(k * rows, min(h, (k + 1) * rows)) for k in range(self.n_strips(h, rows))]
        fold = self.card.read_affine
        # invalid pixels are never sent: no fill (None), so a nodata-heavy strip costs no extra pass; with an
        # affine normalisation the strips hold the DN (GDAL decodes into them) and the copy into the block
        # scales them: one pass over each pixel in all
        reader = RowWindows(self.source, windows, prepare=self._normalise, fill=None, fold=fold,
                            raw=reads_dn(self.card))
        scale: tuple[np.ndarray, np.ndarray] | None = None
        if reader.raw:
            mul, add = self.source.dn_affine(fold)  # type: ignore[attr-defined]
            scale = (mul.astype(np.float32), add.astype(np.float32))
        arr: np.ndarray | None = None
        runs: list[PixelRun] = []
        fill = 0
        t_wait = time.perf_counter()
        for k, (data, valid) in enumerate(reader):
            t0 = time.perf_counter()
            self.stats.add("read_wait", t0 - t_wait)
            r0 = windows[k][0]
            flat = data.reshape(data.shape[0], -1)  # no copy: each band's rows are contiguous
            vflat = valid.reshape(-1)
            count = int(np.count_nonzero(vflat))
            index = None if count == vflat.size else np.flatnonzero(vflat)  # None: every pixel valid
            self.control.put(self.out_q, StripCut(k, r0, valid.shape[0], index, count))
            start = 0
            while start < count:
                if arr is None:
                    self.stats.add("cut", time.perf_counter() - t0)
                    arr = self.pool.take()
                    t0 = time.perf_counter()
                n = min(self.block - fill, count - start)
                self._put(self._view(arr), fill, flat, start, n, index, scale)
                runs.append(PixelRun(k, start, n, fill))
                fill += n
                start += n
                if fill == self.block:
                    self.stats.add("cut", time.perf_counter() - t0)
                    self.control.put(self.in_q, Batch(runs, arr, fill))
                    t0 = time.perf_counter()
                    arr, runs, fill = None, [], 0
            self.stats.add("cut", time.perf_counter() - t0)
            t_wait = time.perf_counter()
        if arr is not None and fill:
            view = self._view(arr)
            if self.layout == "folded":
                view[:, fill:] = 0.0
            else:
                view[fill:] = 0.0
            self.control.put(self.in_q, Batch(runs, arr, fill))
        self.stats.add("read", reader.seconds["read"])
        self.stats.add("normalise", reader.seconds["prepare"])

    def _put(self, view: np.ndarray, fill: int, flat: np.ndarray, start: int, n: int, index: np.ndarray | None,
             scale: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Copy valid pixels ``start .. start + n`` of a strip (``flat``: ``(C, pixels)``; ``index``: the valid
        ones' positions, None: all) into the block ``view`` from position ``fill``; ``scale`` ``(multiply,
        add)`` per band turns DN strips into the model's input on the way (None: the strip holds it)."""
        if scale is None:  # the strip holds the model's input
            if self.layout == "folded":
                dst = view[:, fill : fill + n]
                if index is None:
                    dst[...] = flat[:, start : start + n]
                else:
                    np.take(flat, index[start : start + n], axis=1, out=dst, mode="clip")
            else:
                dst = view[fill : fill + n]
                if index is None:
                    dst[...] = flat[:, start : start + n].T
                else:
                    np.take(flat.T, index[start : start + n], axis=0, out=dst, mode="clip")
            return
        src = flat[:, start : start + n] if index is None else np.take(flat, index[start : start + n], axis=1,
                                                                       mode="clip")
        dst = view[:, fill : fill + n] if self.layout == "folded" else view[fill : fill + n].T  # (C, n)
        np.multiply(src, scale[0][:, None], out=dst, casting="unsafe")  # DN -> input, as the reader scales
        np.add(dst, scale[1][:, None], out=dst)

    def _normalise(self, data: np.ndarray) -> np.ndarray:
        return self.card.normalise(data, out=data)


def reads_dn(card: ModelCard) -> bool:
    """Whether the stream reads ``card``'s scenes as DN strips (``RowWindows(raw=True)``, where the source's
    bands share a 16-bit DN dtype) and scales the DN as it packs them: pixel models with an affine
    normalisation (what a prefetch of the first rows should read too)."""
    return card.kind == "pixel" and card.read_affine is not None


def pixel_block(shape: Sequence[int], bands: int) -> tuple[int, str]:
    """Pixels per call and block layout of a pixel runner's input shape (see :class:`PixelProducer`)."""
    dims = tuple(int(v) for v in shape)
    if len(dims) == 2 and dims[1] == bands:
        return dims[0], "nc"
    if len(dims) == 4 and dims[1] == bands and dims[2:] == (1, 1):
        return dims[0], "nc"
    if len(dims) == 4 and dims[0] == 1 and dims[1] == bands:
        return dims[2] * dims[3], "folded"
    raise ValueError(f"a pixel model takes [N, {bands}], [N, {bands}, 1, 1] or folded [1, {bands}, H, W]; got {dims}")
