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
    """

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
