"""One retry helper for everything cloudmask repeats: STAC API requests, job searches, scenes, pushes.

A :class:`RetryPolicy` says how often and how patiently; :func:`call` runs a function under it with
`tenacity <https://tenacity.readthedocs.io>`_ (exponential backoff ``backoff * 2**(n-1)`` seconds,
capped at ``backoff_max``), logging each retry as ``Retrying <what> ...`` at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from .errors import CatalogUnreachableError, ReadError, WriteError

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["TRANSIENT", "RetryPolicy", "call"]


#: Failures of a scene worth another attempt in every batch: remote reads, catalogue hiccups, I/O errors.
TRANSIENT: tuple[type[BaseException], ...] = (ReadError, CatalogUnreachableError, WriteError, OSError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after the first attempt (``count``), the first wait and the longest wait (seconds)."""

    count: int = 2
    backoff: float = 5.0
    backoff_max: float = 300.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.backoff < 0 or self.backoff_max < 0:
            raise ValueError(f"retry count and waits must be >= 0, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1)))


def call(
    fn: Callable[[], T],
    policy: RetryPolicy,
    retry_if: Callable[[BaseException], bool],
    what: str,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``fn()``, retried under ``policy`` while ``retry_if(error)`` holds; the last error is re-raised.

    ``what`` names the action in the log (``Retrying GET http://... in 0.5 s (attempt 2 of 4): ...``);
    ``on_retry(attempt, error, delay_s)`` is called before each wait (``attempt`` counts from 1).
    """

    def wait(state: tenacity.RetryCallState) -> float:
        return policy.delay(state.attempt_number)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("Retrying %s in %.1f s (attempt %d of %d): %s", what, delay, state.attempt_number + 1,
                    policy.count + 1, _short(err))
        if on_retry is not None and err is not None:
            on_retry(state.attempt_number, err, delay)

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.count + 1),
        wait=wait,
        retry=tenacity.retry_if_exception(retry_if),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)


def _short(err: BaseException | None) -> str:
    if err is None:
        return ""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    return first[:300]
