"""Scenes back to back on one device, without the device waiting between them.

A batch (``cloudmask run``/``demo``) masks scenes one after the other on the same runners. Done
naively the device idles between scenes while the host finalises the COG, draws the quicklook,
writes the item, then opens the next scene and reads its first strip (1.7-2.0 s per scene measured).
:class:`ScenePipeline` runs each scene in its own thread and serialises only what uses the device:

* scene ``k + 1`` is started while scene ``k`` streams: it opens its bands and reads its first rows
  (:meth:`cloudmask.reader.RasterSource.prefetch`), then waits for its :class:`Turn`;
* scene ``k`` hands the device on as soon as its last batch is blended, and finishes its COG,
  quicklook and item while scene ``k + 1`` streams.

A scene starts preparing when the one before it takes the device. At most four scenes are in
flight (two finishing, one streaming, one preparing). Results come back
in order and a scene's failure stays its own. :class:`DeviceClock` measures the device's idle gap
between consecutive scenes (end of one scene's last call to the start of the next one's first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Longest a scene leaving the device waits for the next one's first call before finishing its outputs.
HANDOFF_WAIT_S = 1.0


class DeviceClock:
    """Wraps runners to time their calls; per turn, the first call's start and the last call's end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turn: int | None = None
        self.calls: dict[int, list[float]] = {}  # turn -> [first start, last end] (perf_counter seconds)
        self.on_first_call: Callable[[int], None] | None = None

    def wrap(self, runners: Sequence[Any]) -> list[Any]:
        """The runners, each call timed (attributes such as ``input_shape`` and ``lag`` pass through)."""
        return [_TimedRunner(r, self) for r in runners]

    def _begin(self, turn: int) -> None:
        with self._lock:
            self._turn = turn

    def _record(self, start: float, end: float) -> None:
        with self._lock:
            turn = self._turn
            if turn is None:
                return
            first = turn not in self.calls
            span = self.calls.setdefault(turn, [start, end])
            span[1] = max(span[1], end)
        if first and self.on_first_call is not None:
            self.on_first_call(turn)

    def gaps(self) -> dict[int, float]:
        """Turn -> seconds the device idled between the previous turn's last call and this turn's first."""
        out = {}
        turns = sorted(self.calls)
        for a, b in zip(turns[:-1], turns[1:], strict=True):
            out[b] = max(0.0, self.calls[b][0] - self.calls[a][1])
        return out


class _TimedRunner:
    def __init__(self, inner: Any, clock: DeviceClock) -> None:
        self._inner, self._clock = inner, clock

    def run(self, batch: Any) -> Any:
        t0 = time.perf_counter()
        out = self._inner.run(batch)
        self._clock._record(t0, time.perf_counter())
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class DeviceTurns:
    """The device for one scene at a time, in ticket order; a ticket closed unused passes its turn on.

    A scene leaving its turn waits (at most :data:`HANDOFF_WAIT_S`) until the next scene has made
    its first device call (with a clock; else: has taken its turn) before it goes on to finish its
    outputs, so that the CPU-heavy COG and quicklook do not slow the next scene's start.
    """

    def __init__(self, clock: DeviceClock | None = None, on_acquire: Callable[[int], None] | None = None) -> None:
        self.on_acquire = on_acquire
        self._cv = threading.Condition()
        self._issued = 0
        self._next = 0
        self._done: set[int] = set()
        self._started: dict[int, threading.Event] = {}
        self.clock = clock
        if clock is not None:
            clock.on_first_call = self._mark_started

    def started(self, n: int) -> threading.Event:
        """Set once turn ``n`` made its first device call (or ended without one)."""
        with self._cv:
            return self._started.setdefault(n, threading.Event())

    def _mark_started(self, n: int) -> None:
        self.started(n).set()

    @property
    def issued(self) -> int:
        return self._issued

    def ticket(self) -> Turn:
        with self._cv:
            t = Turn(self, self._issued)
            self._issued += 1
            return t

    def _acquire(self, n: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._next == n)
        if self.clock is not None:
            self.clock._begin(n)
        else:
            self._mark_started(n)
        if self.on_acquire is not None:
            self.on_acquire(n)

    def _release(self, n: int) -> None:
        self._mark_started(n)  # a turn that ends without a call must not hold up its predecessor
        with self._cv:
            self._done.add(n)
            while self._next in self._done:
                self._next += 1
            self._cv.notify_all()


class Turn:
    """A context manager held while one scene streams; :meth:`close` passes it on if never used."""

    def __init__(self, turns: DeviceTurns, number: int) -> None:
        self.turns, self.number = turns, number
        self._closed = False
        self.waited = 0.0  # seconds this scene waited for the device after it was ready

    def __enter__(self) -> Turn:
        if self._closed:  # a retry of the scene: its turn is gone; the runners' lease keeps them its own
            return self
        t0 = time.perf_counter()
        self.turns._acquire(self.number)
        self.waited = time.perf_counter() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self.turns.issued > self.number + 1:  # a next scene is queued: let it start first
            self.turns.started(self.number + 1).wait(HANDOFF_WAIT_S)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.turns._release(self.number)


class ScenePipeline(Generic[T]):
    """Runs ``run(spec, turn)`` for scenes in order, the next ``ahead`` scenes started early.

    Call it with each scene in the order of ``specs`` (some may be left out: ``skip(spec)`` tells
    which, so that no work starts for them); it returns that scene's result or raises its error.
    ``run`` must stream inside ``with turn:`` and do everything else (opening, prefetching,
    finishing outputs) outside it. :meth:`close` waits for scenes still in flight.
    """

    def __init__(self, specs: Sequence[Any], run: Callable[[Any, Turn], T], *,
                 skip: Callable[[Any], bool] | None = None, ahead: int = 1, clock: DeviceClock | None = None) -> None:
        self.specs = list(specs)
        self.run, self.skip, self.ahead = run, skip, max(0, ahead)
        self.turns = DeviceTurns(clock, on_acquire=self._on_acquire)
        self._pool = ThreadPoolExecutor(self.ahead + 3, thread_name_prefix="cloudmask-scene")
        self._started: dict[int, tuple[Future[T], Turn]] = {}
        self._index_of_turn: dict[int, int] = {}
        self._lock = threading.Lock()

    def _start(self, k: int) -> Future[T]:
        with self._lock:
            if k not in self._started:
                turn = self.turns.ticket()
                self._index_of_turn[turn.number] = k
                self._started[k] = (self._pool.submit(self._job, self.specs[k], turn), turn)
            return self._started[k][0]

    def _start_after(self, k: int) -> None:
        """Start the next ``ahead`` scenes after scene ``k`` that are not skipped."""
        started = 0
        for j in range(k + 1, len(self.specs)):
            if started >= self.ahead:
                break
            if self.skip is not None and self.skip(self.specs[j]):
                continue
            self._start(j)
            started += 1

    def _on_acquire(self, turn: int) -> None:
        """A scene takes the device: the next one starts preparing now (not when its result is asked for)."""
        k = self._index_of_turn.get(turn)
        if k is not None:
            self._start_after(k)

    def _job(self, spec: Any, turn: Turn) -> T:
        try:
            return self.run(spec, turn)
        finally:
            turn.close()  # a scene that failed before (or without) streaming passes its turn on

    def index(self, spec: Any) -> int:
        for k, s in enumerate(self.specs):
            if s is spec:
                return k
        raise KeyError(f"scene {getattr(spec, 'id', spec)} is not in this pipeline")

    def turn_of(self, spec: Any) -> int | None:
        """The turn number of ``spec`` (the key of :meth:`DeviceClock.gaps`), or None if not started."""
        started = self._started.get(self.index(spec))
        return None if started is None else started[1].number

    def __call__(self, spec: Any) -> T:
        k = self.index(spec)
        fut = self._start(k)
        self._start_after(k)
        return fut.result()

    def close(self) -> None:
        """Wait for the scenes in flight (a scene started ahead but never asked for still completes)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> ScenePipeline[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
