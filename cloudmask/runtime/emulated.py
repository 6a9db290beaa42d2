"""An emulated device: fixed latency per call, no compute. Measures the host pipeline alone."""

from __future__ import annotations

import threading
import time

import numpy as np

from ..models import ModelCard
from .shapes import runner_shapes


class EmulatedRunner:
    """Sleeps ``latency_s`` seconds per call and returns constant scores.

    The output favours class 0 (clear) everywhere, so masks stay well-formed. ``input_shape`` is
    ``(batch, bands, patch, patch)`` as for a real device, or ``shape``/``out_shape`` when given
    (pixel models, patch classifiers: see :meth:`for_card`). The same output array is returned by
    every call.
    """

    def __init__(self, bands: int, patch: int, classes: int = 3, batch: int = 1, latency_s: float = 0.0,
                 *, shape: tuple[int, ...] | None = None, out_shape: tuple[int, ...] | None = None):
        self._shape = shape or (batch, bands, patch, patch)
        self.latency_s = latency_s
        self._out = np.zeros(out_shape or (batch, classes, patch, patch), np.float32)
        self._out[:, 0] = 1.0
        self.calls = 0  # calls made (counted under a lock: a runner misused from two threads still counts right)
        self._count = threading.Lock()

    @classmethod
    def for_card(cls, card: ModelCard, batch: int = 1, latency_s: float = 0.0,
                 block: int | None = None) -> EmulatedRunner:
        """An emulated device with the input and output shapes a runner of ``card``'s kind has."""
        shape, out = runner_shapes(card, batch, block)
        return cls(card.n_bands, card.patch_size, latency_s=latency_s, shape=shape, out_shape=out)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._shape:
            raise ValueError(f"emulated device takes {self._shape}, got {batch.shape}")
        if self.latency_s > 0:
            deadline = time.perf_counter() + self.latency_s
            time.sleep(self.latency_s)
            while time.perf_counter() < deadline:  # sleep may return early
                pass
        with self._count:
            self.calls += 1
        return self._out

    def close(self) -> None:
        pass
