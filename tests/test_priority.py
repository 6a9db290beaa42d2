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
