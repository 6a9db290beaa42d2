"""Stopping on SIGINT (Ctrl-C) and SIGTERM: the scenes in flight stop cleanly, nothing half-written is left.

The command line calls :func:`install` (its own process only). On either signal the handler sets a
process-wide stop flag and raises :class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread;
the scene threads see the flag at their next batch (:func:`check`, called by the engine) and end
with :class:`~cloudmask.errors.StopRequested`, so their sinks remove their temporaries. A scene
whose mask is already streamed finishes its outputs. The CLI then prints one ``error:`` line and
exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from .errors import StopRequested

__all__ = ["Interrupted", "check", "install", "request_stop", "stop_requested"]

_STOP = threading.Event()
_SIGNAL: list[int] = []


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
    """Raise :class:`StopRequested` once a stop was requested (called by scene threads between batches)."""
    if _STOP.is_set():
        name = signal.Signals(_SIGNAL[0]).name if _SIGNAL else "a signal"
        raise StopRequested(f"stopped by {name}; partial files removed")


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
