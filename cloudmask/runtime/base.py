"""The Runner protocol: one fixed-shape inference call at a time."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """A model instance that takes exactly ``input_shape`` per call.

    By model kind: segmentation ``(batch, bands, height, width)`` -> ``(batch, classes, height, width)``;
    patch classifier ``(batch, bands, height, width)`` -> ``(batch, classes)``; pixel ``(N, bands)`` or
    ``(N, bands, 1, 1)`` -> ``(N, classes)``, or a folded pixel model ``(1, bands, H, W)`` ->
    ``(1, classes, H, W)``. ``run`` takes normalised float32 input and returns float32 scores (logits
    or probabilities, as the model card says).

    Contracts: one Runner is used by one thread. ``run`` must not keep ``batch`` after it returns
    (the engine reuses the array). The returned array is read by the blender while the runner may
    already run the next call, so it must not be overwritten in place by a later call unless it is
    constant (:class:`~cloudmask.runtime.EmulatedRunner` returns the same array every call).
    An optional ``lag`` attribute (int, default 0) says how many calls later an input's output comes
    back (2 for a double-buffered Metis instance); the engine pairs and drains with empty calls.
    """

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The one shape ``run`` accepts; constant for the runner's life (the engine pads to it)."""
        ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Scores for ``batch`` (float32, C-contiguous, exactly ``input_shape``), from the runner's own thread.

        Borrows ``batch`` for the call only (the engine recycles it). The blender reads the result after
        later calls may have run (the scores wait in a queue), so each call returns a new array, or
        one that never changes.
        """
        ...

    def close(self) -> None:
        """Free the model instance (session, device); called once, after the last ``run``."""
        ...
