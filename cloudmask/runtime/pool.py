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
import logging
import os
import threading
import time
from collections.abc import Sequence
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

    ``runners`` are loaded when the lease is made; call them only while the lease is entered. ``waited``:
    seconds the last entry waited for another scene to leave.
    """

    def __init__(self, key: RunnerKey, runners: Sequence[Runner], lock: threading.Lock) -> None:
        self.key, self.runners, self._lock = key, runners, lock
        self.waited = 0.0

    def __enter__(self) -> Sequence[Runner]:
        t0 = time.perf_counter()
        self._lock.acquire()
        self.waited = time.perf_counter() - t0
        return self.runners

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class RunnerPool:
    """Runners loaded once per key, handed out as exclusive :class:`Lease`\\ s; :meth:`close` frees them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[RunnerKey, tuple[Sequence[Runner], threading.Lock]] = {}
        self._closed = False
        #: Loads per ``model@backend`` (a process that loads one twice is a bug).
        self.loads: dict[str, int] = {}

    def lease(self, card: ModelCard, backend: str = "onnxruntime", *, instances: int | None = None,
              threads: int = 0, latency_s: float = 0.0, ov: Any = None) -> Lease:
        """The lease of ``card``'s runners on ``backend`` (loaded on first use; thread-safe).

        ``instances``, ``threads`` (ONNX Runtime threads per instance, 0: its choice) and ``latency_s``
        (per call, emulated backend), ``ov`` (OpenVINO's :class:`~cloudmask.runtime.OvConfig`) as for
        :func:`cloudmask.runtime.make_runners`.
        """
        from . import OrtConfig, make_runners

        if backend == "onnx":
            backend = "onnxruntime"
        key = RunnerKey(card.name, str(card.onnx_path), backend, instances, int(threads), float(latency_s), ov)
        with self._lock:
            if self._closed:
                raise RuntimeError("this runner pool is closed")
            entry = self._sets.get(key)
            if entry is None:
                runners = make_runners(card, backend, instances=instances, latency_s=latency_s, ov=ov,
                                       ort=OrtConfig(intra_op_threads=threads)
                                       if threads and backend == "onnxruntime" else None)
                entry = (runners, threading.Lock())
                self._sets[key] = entry
                name = f"{card.name}@{backend}"
                self.loads[name] = self.loads.get(name, 0) + 1
                log.info("loaded model %s on %s in process %d", card.name, backend, os.getpid())
        return Lease(key, entry[0], entry[1])

    def close(self) -> None:
        """Close every runner (each once); later leases are refused."""
        with self._lock:
            sets, self._sets, self._closed = list(self._sets.values()), {}, True
        for runners, lock in sets:
            with lock:  # a scene still streaming finishes first
                for r in runners:
                    try:
                        r.close()
                    except Exception as err:  # noqa: BLE001 - closing must go on for the others
                        log.debug("closing a runner failed: %s", err)

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
