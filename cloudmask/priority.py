"""Scheduling priority of the engine's host threads.

A batch-1 device is kept busy only if its thread runs the moment a call returns. On a host whose
cores are all busy decoding, normalising and cutting, the kernel may let that thread wait; so the
threads the engine owns for host work (band reads, read-ahead, the producer) run at a lower priority
(a higher niceness) than the device threads and the caller's thread. Linux gives every thread its own
niceness; elsewhere this does nothing. Raising niceness needs no privileges (and cannot be undone
without them, which is why it is applied only to threads the engine creates and ends).
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

#: Niceness the engine's host threads run at above the process's own (``$CLOUDMASK_HOST_NICE``; 0 = off).
HOST_NICE = int(os.environ.get("CLOUDMASK_HOST_NICE", "5"))


def lower_thread_priority(nice: int | None = None) -> None:
    """Run the calling thread at the process's niceness plus ``nice`` (default :data:`HOST_NICE`).

    Linux only; never lowers a thread that is already at least that nice; never raises.
    """
    step = HOST_NICE if nice is None else nice
    if step <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + step)
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except (OSError, AttributeError) as err:  # a sandbox may refuse: priority is only an optimisation
        log.debug("cannot lower the priority of thread %s: %s", threading.current_thread().name, err)


#: Timer slack of device threads, nanoseconds (Linux adds 50 us to every timed sleep or wait by default).
DEVICE_TIMER_SLACK_NS = 1_000


def tighten_timer_slack(ns: int = DEVICE_TIMER_SLACK_NS) -> None:
    """Let the calling thread's timed waits end within ``ns`` nanoseconds of their deadline (Linux
    ``PR_SET_TIMERSLACK``; elsewhere, or if refused, nothing). For device threads: a call that waits for
    its device with a timeout (or an emulated device's sleep) returns ~50 us sooner, every call."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(29, ctypes.c_ulong(ns), 0, 0, 0) != 0:  # 29 = PR_SET_TIMERSLACK
            log.debug("cannot set the timer slack of thread %s (errno %d)", threading.current_thread().name,
                      ctypes.get_errno())
    except (OSError, AttributeError) as err:  # no libc to load: slack is only an optimisation
        log.debug("cannot set the timer slack of thread %s: %s", threading.current_thread().name, err)
