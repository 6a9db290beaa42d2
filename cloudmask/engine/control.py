"""Plumbing shared by the engine's threads: bounded queues that give up when another thread failed."""

from __future__ import annotations

import queue
import threading
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class Abort(Exception):
    """Raised inside a thread when the engine stops because another thread failed."""


class Control:
    """The stop flag and the first errors of any thread."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()

    def fail(self, err: BaseException) -> None:
        with self._lock:
            self.errors.append(err)
        self.stop.set()

    def put(self, q: queue.Queue[Any], item: Any) -> None:
        """Put into a bounded queue, waiting; raises :class:`Abort` once the engine stops."""
        while True:
            if self.stop.is_set():
                raise Abort
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue[T]) -> T:
        """Take from a queue, waiting; raises :class:`Abort` once another thread failed."""
        while True:
            if self.stop.is_set() and self.errors:
                raise Abort
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue


class BufferPool:
    """Preallocated batch arrays, recycled: the producer takes one per batch, the device thread gives it back.

    ``size`` arrays of ``shape`` float32 exist for the whole scene (no allocation per batch).
    """

    def __init__(self, shape: tuple[int, ...], size: int, control: Control) -> None:
        self.shape = shape
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(size):
            self._free.put(np.zeros(shape, np.float32))
        self._control = control

    def take(self) -> np.ndarray:
        return self._control.get(self._free)

    def give(self, array: np.ndarray) -> None:
        self._free.put(array)
