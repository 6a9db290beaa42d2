"""Stopping scenes cleanly: on SIGINT (Ctrl-C) and SIGTERM, and when a job task's lease is gone.

The command line calls :func:`install` (its own process only). On either signal the handler sets a
process-wide stop flag and raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread;
the scene threads see the flag at their next batch (:func:`check`, called by the engine) and end
with :class:`~cloudmask.errors.StopRequested`, so their sinks remove their temporaries. A scene
whose mask is already streamed finishes its outputs. The CLI then prints one ``error:`` line and
exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

A job task (:func:`cloudmask.jobs.task.process_scene`) runs under :func:`lease`: a check that its run
still holds the job's lock. :func:`check` asks it (at most once a second) between batches, and
:func:`check_publish` just before any output is renamed into place, so an orphaned dask worker (its
driver or scheduler gone, the lock released) stops and publishes nothing.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import FrameType
from typing import Any

from .errors import StopRequested

__all__ = ["Interrupted", "check", "check_publish", "install", "lease", "request_stop", "stop_requested"]

_STOP = threading.Event()
_SIGNAL: list[int] = []
#: The lease check of the job task running in this context (raises when the lease is gone), and when it last passed.
_LEASE: ContextVar[tuple[Callable[[], None], list[float]] | None] = ContextVar("cloudmask_lease", default=None)
#: Seconds between lease checks while a scene streams.
LEASE_CHECK_S = 1.0


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by the SIGINT/SIGTERM handler; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def request_stop(signum: int = signal.SIGINT) -> None:
    """Ask every scene in flight to stop at its next batch."""
    _SIGNAL[:] = [signum]
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def check() -> None:
    """Raise :class:`StopRequested` once a stop was requested, or the lease's error once it is gone
    (called by scene threads between batches)."""
    if _STOP.is_set():
        name = signal.Signals(_SIGNAL[0]).name if _SIGNAL else "a signal"
        raise StopRequested(f"stopped by {name}; partial files removed")
    held = _LEASE.get()
    if held is not None and time.monotonic() - held[1][0] >= LEASE_CHECK_S:
        held[0]()
        held[1][0] = time.monotonic()


def check_publish() -> None:
    """Raise the lease's error when the job task running here lost its lease (before a rename into place)."""
    held = _LEASE.get()
    if held is not None:
        held[0]()


@contextmanager
def lease(still_held: Callable[[], None]) -> Iterator[None]:
    """Run the block under a lease: ``still_held()`` raises when it is gone (:func:`check`, :func:`check_publish`)."""
    token = _LEASE.set((still_held, [time.monotonic()]))
    try:
        yield
    finally:
        _LEASE.reset(token)


def _handler(signum: int, frame: FrameType | None) -> None:
    request_stop(signum)
    raise Interrupted(signum)


def install() -> Callable[[], None]:
    """Clear the stop flag and handle SIGINT and SIGTERM (main thread only); returns what restores the
    previous handlers."""
    _STOP.clear()
    _SIGNAL.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, _handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
