"""The device pool: one thread per :class:`~cloudmask.runtime.Runner`, taking batches round-robin.

A runner with ``lag = k`` (a double-buffered Metis instance) returns the output of the call ``k``
calls earlier; the worker pairs outputs with their inputs and drains the pipeline with blank calls
at the end. After each call the batch array goes back to the buffer pool.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..priority import tighten_timer_slack
from ..runtime.base import Runner
from .control import Abort, BufferPool, Control
from .messages import Batch, DeviceDone, Scores, Task
from .stats import StreamStats


class DeviceWorker:
    """Runs batches from ``in_q`` on ``runner`` and sends :class:`Scores` to ``out_q``; keeps its own stats."""

    def __init__(self, runner: Runner, control: Control, in_q: queue.Queue[Any], out_q: queue.Queue[Any],
                 pool: BufferPool) -> None:
        self.runner, self.control, self.in_q, self.out_q, self.pool = runner, control, in_q, out_q, pool
        self.stats = StreamStats()
        self._pending: deque[tuple[Sequence[Task], int] | None] = deque()
        self._lag = int(getattr(runner, "lag", 0))

    def _call(self, batch: Batch | None, arr: np.ndarray) -> None:
        t0 = time.perf_counter()
        scores = self.runner.run(arr)
        self.stats.add("device", time.perf_counter() - t0)
        self.stats.calls += 1
        if batch is not None:
            self.pool.give(arr)
        self._pending.append(None if batch is None else (batch.tasks, batch.filled))
        if len(self._pending) > self._lag:
            done = self._pending.popleft()
            if done is not None:
                self.control.put(self.out_q, Scores(done[0], scores, done[1]))

    def run(self) -> None:
        """Thread body: run until the producer's ``None``, drain, report :class:`DeviceDone`."""
        tighten_timer_slack()  # a call's wait for its device ends on time, not 50 us late
        first = True
        try:
            while True:
                t0 = time.perf_counter()
                item = self.control.get(self.in_q)
                if not first:
                    self.stats.add("device_idle", time.perf_counter() - t0)
                if item is None:
                    break
                first = False
                self._call(item, item.array)
            if self._lag and self._pending:  # drain a pipelined device with empty inputs
                blank = np.zeros(self.runner.input_shape, np.float32)
                for _ in range(self._lag):
                    self._call(None, blank)
        except Abort:
            pass
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            self.control.fail(err)
        finally:
            with contextlib.suppress(Abort):
                self.control.put(self.out_q, DeviceDone(self.stats))
