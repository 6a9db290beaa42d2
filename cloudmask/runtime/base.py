"""The Runner protocol: one fixed-shape inference call at a time."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """A model instance that takes exactly ``input_shape`` = ``(batch, bands, height, width)`` per call.

    ``run`` takes normalised float32 NCHW input and returns float32 ``(batch, classes, height, width)``
    scores (logits or probabilities, as the model card says). One Runner is used by one thread.
    """

    @property
    def input_shape(self) -> tuple[int, int, int, int]: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
