"""``stream_scene``: the producer, the device pool and the blender wired by bounded queues.

Memory stays bounded by the queue sizes, the buffer pool and a few row strips whatever the scene
size. The calling thread blends and writes; errors of any thread stop all and are raised here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import interrupt
from ..errors import CloudmaskError
from ..grid import DEFAULT_MARGIN, Blend
from ..models import ModelCard
from ..runtime.base import Runner
from .control import Abort, BufferPool, Control
from .devices import DeviceWorker
from .io import MaskSink, PatchSource
from .messages import DeviceDone, Scores
from .stats import StreamStats
from .strategies import make_strategy


@dataclass(frozen=True)
class StreamConfig:
    """Engine settings: patch halo (pixels each side), blending, queue depth (batches) and outputs.

    ``strip_rows`` (pixel models): rows read per strip (default: two blocks' worth, 128-256 rows).
    """

    margin: int = DEFAULT_MARGIN
    blend: Blend = "tukey"
    queue_batches: int = 8
    probabilities: bool = False
    strip_rows: int | None = None


def stream_scene(
    source: PatchSource,
    card: ModelCard,
    runners: Sequence[Runner],
    sink: MaskSink,
    config: StreamConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> StreamStats:
    """Mask one scene: read ``source``, run every non-empty patch (or block of valid pixels) through
    ``runners``, write to ``sink``.

    All runners must share one input shape; its batch dimension decides how patches are grouped
    (the last batch is padded with zeros), or for pixel models how many pixels go in one call.
    The sink receives the mask on :func:`~cloudmask.engine.strategies.output_shape` (patch resolution
    for patch classifiers). ``progress(done, total)`` is called after every batch (patches, or pixels
    for pixel models). Raises the first error of any thread.
    """
    cfg = config or StreamConfig()
    interrupt.check()
    if not runners:
        raise CloudmaskError("stream_scene needs at least one runner")
    shape = tuple(runners[0].input_shape)
    if any(tuple(r.input_shape) != shape for r in runners):
        raise CloudmaskError(f"all runners must share one input shape, got {[r.input_shape for r in runners]}")
    h, w = source.shape
    strategy = make_strategy(card, shape, h, w, cfg.margin, cfg.blend, cfg.strip_rows)
    t_start = time.perf_counter()
    control = Control()
    in_q: queue.Queue[Any] = queue.Queue(maxsize=max(1, cfg.queue_batches))
    out_q: queue.Queue[Any] = queue.Queue(maxsize=max(2, cfg.queue_batches))
    pool = BufferPool(shape, max(1, cfg.queue_batches) + len(runners) + 1, control)
    producer = strategy.producer(source, control, in_q, out_q, pool, len(runners))
    workers = [DeviceWorker(r, control, in_q, out_q, pool) for r in runners]
    blend_stats = StreamStats()
    blender = strategy.blender(blend_stats, cfg.probabilities)
    threads = [threading.Thread(target=producer.run, name="cloudmask-producer", daemon=True)]
    threads += [threading.Thread(target=wk.run, name=f"cloudmask-device-{k}", daemon=True)
                for k, wk in enumerate(workers)]
    for t in threads:
        t.start()
    try:
        finished = 0
        while finished < len(workers):
            msg = control.get(out_q)
            interrupt.check()  # SIGINT/SIGTERM: stop between batches (the sink removes its temporaries)
            if isinstance(msg, DeviceDone):
                finished += 1
                continue
            if isinstance(msg, Scores):
                blocks = blender.feed(msg.tasks, msg.scores, msg.filled)
                if progress is not None:
                    progress(strategy.done(blender), strategy.total)
            else:
                blocks = blender.cut(msg)
            for b in blocks:
                t0 = time.perf_counter()
                sink.write_block(b.row, b.classes, b.probabilities)
                blend_stats.add("write", time.perf_counter() - t0)
        if not blender.is_done and not control.errors:
            raise CloudmaskError("internal error: stream ended with row blocks unfinished")
    except Abort:
        pass
    except BaseException as err:  # noqa: BLE001 - raised below, after the threads stopped
        control.fail(err)
    finally:
        if control.errors:
            control.stop.set()
        for t in threads:
            t.join()
    if control.errors:
        raise control.errors[0]
    stats = StreamStats(unit=strategy.unit, per_call=strategy.per_call)
    for part in (producer.stats, *(wk.stats for wk in workers), blend_stats):
        stats.merge(part)
    stats.seconds["total"] = time.perf_counter() - t_start
    return stats
