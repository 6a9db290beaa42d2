"""Host threads of the engine run nicer than the device threads and the caller (Linux)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cloudmask.priority import lower_thread_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_thread_is_made_nicer_and_the_caller_is_not():
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    main_before = _nice()
    seen: list[int] = []

    def body() -> None:
        lower_thread_priority(3)
        lower_thread_priority(3)  # idempotent: not 6
        seen.append(_nice())

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [min(19, base + 3)]
    assert _nice() == main_before


def test_zero_turns_it_off():
    seen: list[int] = []

    def body() -> None:
        before = _nice()
        lower_thread_priority(0)
        seen.append(_nice() - before)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [0]


def test_the_readers_band_threads_run_nicer(sample_items):
    from cloudmask.priority import HOST_NICE
    from cloudmask.profiles import scene_spec
    from cloudmask.reader import RasterSource

    spec = scene_spec(sample_items[0])
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    with RasterSource(spec, ("red",), spec.geobox(30.0)) as src:
        src.read_rows(0, 10)
        band_thread = src._executor().submit(_nice).result()
    assert band_thread == min(19, base + HOST_NICE) and _nice() == base


def _timer_slack_ns() -> int:
    import ctypes

    return int(ctypes.CDLL(None).prctl(30, 0, 0, 0, 0))  # PR_GET_TIMERSLACK


def test_device_threads_wake_on_time_and_other_threads_keep_the_default_slack():
    """A device thread's timed waits (an emulated call's sleep, a runtime's wait for its device) end within
    1 us of their deadline instead of Linux's default 50 us; the caller's thread is left as it was."""
    import numpy as np

    from cloudmask.engine.control import BufferPool, Control
    from cloudmask.engine.devices import DeviceWorker
    from cloudmask.priority import DEVICE_TIMER_SLACK_NS

    before = _timer_slack_ns()
    seen: list[int] = []

    class Probe:
        input_shape = (1, 2)

        def run(self, batch: np.ndarray) -> np.ndarray:
            seen.append(_timer_slack_ns())
            return batch

    import queue

    from cloudmask.engine.messages import Batch

    control, in_q, out_q = Control(), queue.Queue(), queue.Queue()
    pool = BufferPool((1, 2), 2, control)
    in_q.put(Batch([], pool.take(), 0))
    in_q.put(None)
    t = threading.Thread(target=DeviceWorker(Probe(), control, in_q, out_q, pool).run)
    t.start()
    t.join(5)
    assert seen == [DEVICE_TIMER_SLACK_NS] and _timer_slack_ns() == before
