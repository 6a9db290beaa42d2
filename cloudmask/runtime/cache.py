"""This process's loaded models: one set of runners per (model, backend), made on first use.

Job tasks (:mod:`cloudmask.jobs.task`) run many scenes in one process, in threads or as dask tasks on a
worker; each process loads a model once. ``runner_lock`` serialises scenes on a backend whose runners
must not be shared (a Metis device); ``runner_loads`` counts the loads (a worker that loads twice is a bug).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from ..card import ModelCard
from . import OvConfig, make_runners
from .base import Runner

log = logging.getLogger(__name__)

_RUNNERS: dict[tuple[Any, ...], Sequence[Runner]] = {}
_RUNNER_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()
#: How many times each ``model@backend`` was loaded in this process (once).
LOADS: dict[str, int] = {}


def _key(card: ModelCard, backend: str, latency: float, ov: OvConfig | None = None) -> tuple[Any, ...]:
    return (card.name, str(card.onnx_path), backend, float(latency), ov)


def cached_runners(card: ModelCard, backend: str, latency: float = 0.0, ov: OvConfig | None = None) -> Sequence[Runner]:
    """This process's runners for ``card`` on ``backend`` (``latency`` s for the emulated one; ``ov``: OpenVINO's
    precision and calibration), made on first use (one model load per process). Thread-safe."""
    key = _key(card, backend, latency, ov)
    with _CACHE_LOCK:
        runs = _RUNNERS.get(key)
        if runs is None:
            runs = make_runners(card, backend, latency_s=latency, ov=ov)
            _RUNNERS[key] = runs
            _RUNNER_LOCKS[key] = threading.Lock()
            name = f"{card.name}@{backend}"
            LOADS[name] = LOADS.get(name, 0) + 1
            log.info("loaded model %s on %s in process %d", card.name, backend, os.getpid())
        return runs


def runner_lock(card: ModelCard, backend: str, latency: float = 0.0, ov: OvConfig | None = None) -> threading.Lock:
    """The lock of the runners :func:`cached_runners` made for these arguments (call that first)."""
    return _RUNNER_LOCKS[_key(card, backend, latency, ov)]


def runner_loads() -> dict[str, int]:
    """``LOADS`` of this process (used through ``client.run`` to check each worker loaded once)."""
    return dict(LOADS)
