"""This process's loaded models, and who may call them: :class:`RunnerPool` and its :class:`Lease`.

A runner serves one thread at a time (:class:`~cloudmask.runtime.base.Runner`). A batch (``run``,
``demo``, ``job run``) masks several scenes at once in threads (one streams while the next opens and
the one before finishes its COG), so the runners of a model are loaded once per process here and a
scene uses them only while it holds their :class:`Lease` (entered just around the streaming part).
Runners are keyed by everything that makes them differ (model file, backend, instances, threads,
emulated latency), and closed when the pool is closed: :func:`process_pool` is closed at interpreter
exit, a pool made for one batch when the batch ends.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..card import ModelCard
from .base import Runner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunnerKey:
    """What tells two sets of runners apart: model (name and file), backend and their build options."""

    model: str
    onnx_path: str
    backend: str
    instances: int | None = None
    threads: int = 0
    latency_s: float = 0.0
    ov: Any = None  # OpenVINO's OvConfig (precision, threads, calibration), or None


class Lease:
    """One set of runners, used by one scene at a time: enter it around the streaming (a context manager).

    ``runners`` are loaded on first use (once per key, whichever lease asks first), so a scene can start
    reading its first rows while its model loads; call them only while the lease is entered. ``waited``:
    seconds the last entry waited for another scene to leave.
    """

    def __init__(self, key: RunnerKey, load: Callable[[], Sequence[Runner]], lock: threading.Lock) -> None:
        self.key, self._load, self._lock = key, load, lock
        self.waited = 0.0

    @property
    def runners(self) -> Sequence[Runner]:
        """The runners (loaded now if no lease of this key loaded them yet)."""
        return self._load()

    def __enter__(self) -> Sequence[Runner]:
        t0 = time.perf_counter()
        self._lock.acquire()
        self.waited = time.perf_counter() - t0
        return self.runners

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _Entry:
    """The runners of one key: loaded once, by the first caller (others wait for that load)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # the lease lock: one scene at a time
        self.loading = threading.Lock()
        self.runners: Sequence[Runner] | None = None


class RunnerPool:
    """Runners loaded once per key, handed out as exclusive :class:`Lease`\\ s; :meth:`close` frees them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[RunnerKey, _Entry] = {}
        self._closed = False
        #: Loads per ``model@backend`` (a process that loads one twice is a bug).
        self.loads: dict[str, int] = {}

    def lease(self, card: ModelCard, backend: str = "onnxruntime", *, instances: int | None = None,
              threads: int = 0, latency_s: float = 0.0, ov: Any = None) -> Lease:
        """The lease of ``card``'s runners on ``backend`` (loaded on first use of ``lease.runners``; thread-safe).

        ``instances``, ``threads`` (ONNX Runtime threads per instance, 0: its choice) and ``latency_s``
        (per call, emulated backend), ``ov`` (OpenVINO's :class:`~cloudmask.runtime.OvConfig`) as for
        :func:`cloudmask.runtime.make_runners`.
        """
        if backend == "onnx":
            backend = "onnxruntime"
        key = RunnerKey(card.name, str(card.onnx_path), backend, instances, int(threads), float(latency_s), ov)
        with self._lock:
            if self._closed:
                raise RuntimeError("this runner pool is closed")
            entry = self._sets.setdefault(key, _Entry())
        return Lease(key, functools.partial(self._load, entry, card, key), entry.lock)

    def _load(self, entry: _Entry, card: ModelCard, key: RunnerKey) -> Sequence[Runner]:
        from . import OrtConfig, make_runners

        if entry.runners is not None:
            return entry.runners
        with entry.loading:
            if entry.runners is None:
                with self._lock:
                    if self._closed:
                        raise RuntimeError("this runner pool is closed")
                backend = key.backend
                entry.runners = make_runners(card, backend, instances=key.instances, latency_s=key.latency_s,
                                             ov=key.ov, ort=OrtConfig(intra_op_threads=key.threads)
                                             if key.threads and backend == "onnxruntime" else None)
                name = f"{card.name}@{backend}"
                with self._lock:
                    self.loads[name] = self.loads.get(name, 0) + 1
                log.info("loaded model %s on %s in process %d", card.name, backend, os.getpid())
        return entry.runners

    def close(self) -> None:
        """Close every runner (each once); later leases are refused."""
        with self._lock:
            entries, self._sets, self._closed = list(self._sets.values()), {}, True
        for entry in entries:
            with entry.loading, entry.lock:  # a load in flight ends, a scene still streaming finishes first
                for r in entry.runners or ():
                    try:
                        r.close()
                    except Exception as err:  # noqa: BLE001 - closing must go on for the others
                        log.debug("closing a runner failed: %s", err)
                entry.runners = None

    def __enter__(self) -> RunnerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PROCESS_POOL: RunnerPool | None = None
_PROCESS_PID = 0
_PROCESS_LOCK = threading.Lock()


def process_pool() -> RunnerPool:
    """This process's pool (job tasks, dask workers): made on first use, closed at interpreter exit.

    The only process-global state of the masking layer; a forked child gets its own pool.
    """
    global _PROCESS_POOL, _PROCESS_PID
    with _PROCESS_LOCK:
        if _PROCESS_POOL is None or os.getpid() != _PROCESS_PID:
            _PROCESS_POOL, _PROCESS_PID = RunnerPool(), os.getpid()
            atexit.register(_PROCESS_POOL.close)
        return _PROCESS_POOL


def runner_loads() -> dict[str, int]:
    """Model loads of :func:`process_pool` (``model@backend`` -> count; used to check a worker loads once)."""
    return dict(process_pool().loads)


def held(*managers: Any) -> Any:
    """One context manager entering ``managers`` in order and leaving them in reverse (e.g. a device turn,
    then the runners' lease)."""
    import contextlib

    @contextlib.contextmanager
    def _both() -> Any:
        with contextlib.ExitStack() as stack:
            for m in managers:
                if m is not None:
                    stack.enter_context(m)
            yield

    return _both()
