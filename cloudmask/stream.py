"""The streaming engine: read strips ahead, feed fixed-shape batches to device threads, blend behind.

Three kinds of thread share bounded queues, so memory stays bounded by the queue sizes and a few row
strips whatever the scene size:

* the **producer** reads the scene one row strip at a time (each pixel once), normalises it, cuts the
  strip into patches, drops patches with no valid pixel, and groups patches into the runner's batch;
* one **device worker** per :class:`~cloudmask.runtime.Runner` takes batches round-robin from the
  queue and runs them;
* the calling thread **blends** the scores into per-core-row accumulators and hands each finished
  row block (argmax, nodata) to the sink as soon as no patch can touch it any more.

Sources and sinks are protocols so that the same engine serves in-memory arrays and COG files.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import CloudmaskError
from .grid import Blend, PatchLayout, blend_weights
from .models import CLASSES, NODATA, ModelCard
from .runtime.base import Runner

log = logging.getLogger(__name__)

N_CLASSES = len(CLASSES)


class PatchSource(Protocol):
    """Rows of a scene at model resolution: ``(bands, rows, width)`` float32 reflectance, NaN = nodata."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def read_rows(self, start: int, stop: int) -> np.ndarray: ...


class MaskSink(Protocol):
    """Receives finished row blocks of the mask, top to bottom."""

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None: ...


@dataclass
class StreamStats:
    """Counts and per-stage seconds of one streamed scene.

    ``device`` is time inside ``Runner.run`` summed over device threads; ``device_idle`` is the time
    device threads waited for input after their first call (the pipeline's gaps).
    """

    patches: int = 0
    skipped: int = 0
    calls: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("read", "normalise", "device", "device_idle", "blend", "write", "total"), 0.0
        )
    )

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def patches_per_second(self) -> float:
        total = self.seconds["total"]
        return self.patches / total if total > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "patches": self.patches,
            "skipped": self.skipped,
            "calls": self.calls,
            "patches_per_second": round(self.patches_per_second, 2),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
        }

    def table(self) -> str:
        """A small plain-text table of the stages."""
        lines = [f"patches {self.patches} (skipped {self.skipped} empty), device calls {self.calls}"]
        total = self.seconds["total"] or float("nan")
        for k, v in self.seconds.items():
            lines.append(f"  {k:<12} {v:9.3f} s  {100 * v / total:5.1f} %")
        return "\n".join(lines)


@dataclass(frozen=True)
class StreamConfig:
    """Engine settings: patch halo (pixels each side), blending, queue depth (batches) and outputs."""

    margin: int = 26
    blend: Blend = "tukey"
    queue_batches: int = 8
    probabilities: bool = False


@dataclass
class _Task:
    row: int
    col: int


class _Abort(Exception):
    pass


def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax in float32."""
    e = np.exp(scores - scores.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def stream_scene(
    source: PatchSource,
    card: ModelCard,
    runners: Sequence[Runner],
    sink: MaskSink,
    config: StreamConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StreamStats:
    """Mask one scene: read ``source``, run every non-empty patch through ``runners``, write to ``sink``.

    All runners must share one input shape; its batch dimension decides how patches are grouped
    (the last batch is padded with zeros). ``progress(done, total)`` is called after every batch,
    ``total`` being the number of patches in the layout. Raises the first error of any thread.
    """
    cfg = config or StreamConfig()
    if not runners:
        raise CloudmaskError("stream_scene needs at least one runner")
    shape = runners[0].input_shape
    if any(r.input_shape != shape for r in runners):
        raise CloudmaskError(f"all runners must share one input shape, got {[r.input_shape for r in runners]}")
    batch, bands, ph, pw = shape
    if (bands, ph, pw) != (card.n_bands, card.patch_size, card.patch_size):
        raise CloudmaskError(
            f"runner shape {shape} does not match model card '{card.name}' "
            f"({card.n_bands} bands, {card.patch_size} px patches)"
        )
    h, w = source.shape
    layout = PatchLayout(h, w, card.patch_size, cfg.margin)
    engine = _Engine(source, card, runners, sink, layout, cfg, batch, progress)
    return engine.run()


class _Engine:
    def __init__(
        self,
        source: PatchSource,
        card: ModelCard,
        runners: Sequence[Runner],
        sink: MaskSink,
        layout: PatchLayout,
        cfg: StreamConfig,
        batch: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.source, self.card, self.runners, self.sink = source, card, runners, sink
        self.layout, self.cfg, self.batch, self.progress = layout, cfg, batch, progress
        self.stats = StreamStats()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.in_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, cfg.queue_batches))
        self.out_q: queue.Queue[Any] = queue.Queue(maxsize=max(2, cfg.queue_batches))
        self.expected: dict[int, int] = {}  # patch row -> patches sent (set before they are queued)
        self.valid_blocks: dict[int, np.ndarray] = {}  # core row -> valid mask of its scene rows
        self.weights = blend_weights(layout.patch, layout.margin, cfg.blend)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------------------ plumbing
    def _put(self, q: queue.Queue[Any], item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Abort
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: queue.Queue[Any]) -> Any:
        while True:
            if self.stop.is_set() and self.errors:
                raise _Abort
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def _fail(self, err: BaseException) -> None:
        with self.lock:
            self.errors.append(err)
        self.stop.set()

    # ------------------------------------------------------------------------------------ producer
    def _produce(self) -> None:
        try:
            self._produce_strips()
        except _Abort:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            self._fail(err)
        finally:
            for _ in self.runners:
                try:
                    self._put(self.in_q, None)
                except _Abort:
                    break

    def _produce_strips(self) -> None:
        lay, card = self.layout, self.card
        p, s = lay.patch, lay.stride
        cols = lay.strip_cols()
        contiguous_cols = bool(np.all(np.diff(cols) == 1)) and len(cols) > 0
        cache = np.empty((card.n_bands, 0, lay.width), np.float32)
        vcache = np.empty((0, lay.width), bool)
        lo = 0  # scene row of cache[:, 0]
        pending: list[tuple[_Task, np.ndarray]] = []
        for i in range(lay.n_rows):
            rows = lay.strip_rows(i)
            need_lo, need_hi = int(rows.min()), int(rows.max()) + 1
            hi = lo + cache.shape[1]
            if need_hi > hi:
                t0 = time.perf_counter()
                new = self.source.read_rows(max(hi, need_lo), need_hi)
                t1 = time.perf_counter()
                valid = ~np.isnan(new).any(axis=0)
                card.normalise(new, out=new)
                new[:, ~valid] = 0.0
                self.stats.add("read", t1 - t0)
                self.stats.add("normalise", time.perf_counter() - t1)
                keep = max(0, min(need_lo, hi) - lo)
                cache = np.concatenate([cache[:, keep:], new], axis=1)
                vcache = np.concatenate([vcache[keep:], valid], axis=0)
                lo = need_hi - cache.shape[1]
            t0 = time.perf_counter()
            r0, r1 = lay.block_rows(i)
            self.valid_blocks[i] = vcache[r0 - lo : r1 - lo].copy()
            local = rows - lo
            if np.all(np.diff(local) == 1):
                strip = cache[:, local[0] : local[-1] + 1]
                vstrip = vcache[local[0] : local[-1] + 1]
            else:
                strip = cache[:, local]
                vstrip = vcache[local]
            if not contiguous_cols:
                strip = strip[:, :, cols]
                vstrip = vstrip[:, cols]
            else:
                strip = strip[:, :, cols[0] : cols[-1] + 1]
                vstrip = vstrip[:, cols[0] : cols[-1] + 1]
            tasks: list[tuple[_Task, np.ndarray]] = []
            for j in range(lay.n_cols):
                if not vstrip[:, j * s : j * s + p].any():
                    self.stats.skipped += 1
                    continue
                tasks.append((_Task(i, j), strip[:, :, j * s : j * s + p]))
            self.expected[i] = len(tasks)
            self.stats.add("normalise", time.perf_counter() - t0)
            if not tasks:
                self._put(self.out_q, ("row-empty", i))
            for task in tasks:
                pending.append(task)
                if len(pending) == self.batch:
                    self._emit(pending)
                    pending = []
            # drop rows no later strip needs
            if i + 1 < lay.n_rows:
                nxt = int(lay.strip_rows(i + 1).min())
                if nxt > lo:
                    cut = min(nxt - lo, cache.shape[1])
                    cache, vcache, lo = cache[:, cut:], vcache[cut:], lo + cut
        if pending:
            self._emit(pending)

    def _emit(self, tasks: list[tuple[_Task, np.ndarray]]) -> None:
        t0 = time.perf_counter()
        b, c, ph, pw = self.runners[0].input_shape
        arr = np.zeros((b, c, ph, pw), np.float32)
        for k, (_, patch) in enumerate(tasks):
            arr[k] = patch
        self.stats.add("normalise", time.perf_counter() - t0)
        self._put(self.in_q, ([t for t, _ in tasks], arr))

    # ------------------------------------------------------------------------------------ devices
    def _device(self, runner: Runner) -> None:
        """Run batches; a runner with ``lag = k`` returns the output of the call ``k`` calls earlier."""
        device = idle = 0.0
        calls = 0
        first = True
        lag = int(getattr(runner, "lag", 0))
        pending: deque[list[_Task] | None] = deque()

        def call(tasks: list[_Task] | None, arr: np.ndarray) -> None:
            nonlocal device, calls
            t0 = time.perf_counter()
            scores = runner.run(arr)
            device += time.perf_counter() - t0
            calls += 1
            pending.append(tasks)
            if len(pending) > lag:
                done = pending.popleft()
                if done is not None:
                    self._put(self.out_q, ("scores", done, scores[: len(done)]))

        try:
            while True:
                t0 = time.perf_counter()
                item = self._get(self.in_q)
                if not first:
                    idle += time.perf_counter() - t0
                if item is None:
                    break
                first = False
                call(*item)
            if lag and pending:  # drain a pipelined device with empty inputs
                blank = np.zeros(runner.input_shape, np.float32)
                for _ in range(lag):
                    call(None, blank)
        except _Abort:
            pass
        except BaseException as err:  # noqa: BLE001
            self._fail(err)
        finally:
            with self.lock:
                self.stats.add("device", device)
                self.stats.add("device_idle", idle)
                self.stats.calls += calls
            with contextlib.suppress(_Abort):
                self._put(self.out_q, ("done",))

    # ------------------------------------------------------------------------------------ consumer
    def run(self) -> StreamStats:
        t_start = time.perf_counter()
        threads = [threading.Thread(target=self._produce, name="cloudmask-producer", daemon=True)]
        threads += [
            threading.Thread(target=self._device, args=(r,), name=f"cloudmask-device-{k}", daemon=True)
            for k, r in enumerate(self.runners)
        ]
        for t in threads:
            t.start()
        try:
            self._consume()
        except _Abort:
            pass
        except BaseException as err:  # noqa: BLE001
            self._fail(err)
        finally:
            if self.errors:
                self.stop.set()
            for t in threads:
                t.join()
        if self.errors:
            raise self.errors[0]
        self.stats.seconds["total"] = time.perf_counter() - t_start
        return self.stats

    def _consume(self) -> None:
        lay = self.layout
        width = lay.n_cols * lay.stride
        n_ch = N_CLASSES + 1  # class probabilities + weight
        acc: dict[int, np.ndarray] = {}
        done: dict[int, int] = {}
        next_block = 0
        finished = 0
        total = lay.n_patches
        w = self.weights
        merge = self.card.class_index
        identity = len(merge) == N_CLASSES and bool(np.array_equal(merge, np.arange(N_CLASSES)))
        probs_in = self.card.output == "probabilities"

        def block(k: int) -> np.ndarray:
            if k not in acc:
                acc[k] = np.zeros((n_ch, lay.stride, width), np.float32)
            return acc[k]

        while finished < len(self.runners):
            msg = self._get(self.out_q)
            if msg[0] == "done":
                finished += 1
            elif msg[0] == "row-empty":
                done.setdefault(msg[1], 0)
            else:
                _, tasks, scores = msg
                t0 = time.perf_counter()
                probs = scores if probs_in else softmax(scores)
                for task, pr in zip(tasks, probs, strict=True):
                    weighted = np.empty((n_ch, lay.patch, lay.patch), np.float32)
                    if identity:
                        np.multiply(pr, w, out=weighted[:N_CLASSES])
                    else:
                        weighted[:N_CLASSES] = 0
                        for ch, cls in enumerate(merge):
                            weighted[cls] += pr[ch] * w
                    weighted[N_CLASSES] = w
                    self._accumulate(block, task, weighted, width)
                    done[task.row] = done.get(task.row, 0) + 1
                self.stats.patches += len(tasks)
                self.stats.add("blend", time.perf_counter() - t0)
                if self.progress is not None:
                    self.progress(self.stats.patches + self.stats.skipped, total)
            while next_block < lay.n_rows and self._block_ready(next_block, done):
                self._finish(next_block, acc.pop(next_block, None))
                next_block += 1
        if next_block < lay.n_rows and not self.errors:
            raise CloudmaskError(f"internal error: stream ended with row block {next_block} unfinished")

    def _block_ready(self, k: int, done: dict[int, int]) -> bool:
        for r in (k - 1, k, k + 1):
            if 0 <= r < self.layout.n_rows and (r not in self.expected or done.get(r, 0) < self.expected[r]):
                return False
        return True

    def _accumulate(self, block: Callable[[int], np.ndarray], task: _Task, weighted: np.ndarray, width: int) -> None:
        lay = self.layout
        s, m, p = lay.stride, lay.margin, lay.patch
        c0 = task.col * s - m
        pc0, pc1 = max(0, -c0), min(p, width - c0)
        dc0 = c0 + pc0
        # patch rows [0, m) -> block row-1 rows [s-m, s); [m, m+s) -> block row; [m+s, p) -> block row+1 rows [0, m)
        parts = ((task.row - 1, 0, m, s - m), (task.row, m, m + s, 0), (task.row + 1, m + s, p, 0))
        for k, a, b, dst in parts:
            if b <= a or not 0 <= k < lay.n_rows:
                continue
            tgt = block(k)
            tgt[:, dst : dst + (b - a), dc0 : dc0 + (pc1 - pc0)] += weighted[:, a:b, pc0:pc1]

    def _finish(self, k: int, accumulated: np.ndarray | None) -> None:
        t0 = time.perf_counter()
        lay = self.layout
        r0, r1 = lay.block_rows(k)
        rows = r1 - r0
        valid = self.valid_blocks.pop(k)
        if accumulated is None:
            classes = np.full((rows, lay.width), NODATA, np.uint8)
            probs = np.zeros((N_CLASSES, rows, lay.width), np.uint8) if self.cfg.probabilities else None
        else:
            a = accumulated[:, :rows, : lay.width]
            classes = np.argmax(a[:N_CLASSES], axis=0).astype(np.uint8)
            classes[~valid] = NODATA
            probs = None
            if self.cfg.probabilities:
                wsum = np.where(a[N_CLASSES] > 0, a[N_CLASSES], 1.0)
                probs = np.rint(100.0 * a[:N_CLASSES] / wsum).astype(np.uint8)
                probs[:, ~valid] = 0
        t1 = time.perf_counter()
        self.sink.write_block(r0, classes, probs)
        self.stats.add("blend", t1 - t0)
        self.stats.add("write", time.perf_counter() - t1)


class ArraySink:
    """Collects the mask (and probabilities) in memory."""

    def __init__(self, height: int, width: int, probabilities: bool = False) -> None:
        self.classes = np.full((height, width), NODATA, np.uint8)
        self.probabilities = np.zeros((N_CLASSES, height, width), np.uint8) if probabilities else None

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
