"""Emulated ``axelera.runtime.op`` of SDK 1.8 (see the package docstring for the docs it follows).

``load(path)`` takes a compiled ``.axm`` (here: the emulation's JSON, :func:`~cloudmask.metis.fake_sdk.write_compiled`)
and returns an operator; ``.optimized()`` returns the callable model. Calling it takes one sample (leading dim 1)
of float input and returns float output: quantization, padding and layout are the SDK's business, emulated
here by rounding input and output to the compiled int8 scales. ``.batch(x)`` takes the whole ``[B, ...]``
array (one argument per model *input*) and returns one result per sample, each with its batch dim of 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import runtime as _rt


class Operator:
    """What ``load`` returns: ``optimized()`` gives the runnable model."""

    def __init__(self, path: str, core_allocation: int | str | None = None) -> None:
        if Path(path).suffix not in (".axm", ".axe"):
            raise ValueError(f"op.load takes a .axm or .axe file, got {path}")
        self.path = path
        self.core_allocation = core_allocation
        self.calls = 0
        self.samples = 0
        self._model = _rt.Model(path)
        if self._model.batch != 1:
            raise ValueError("an .axm for the op API is compiled at batch 1")

    def optimized(self) -> Operator:
        return self

    def _one(self, x: np.ndarray) -> np.ndarray:
        ii, oi = self._model._in, self._model._out
        q = np.clip(np.rint(x / ii.scale + ii.zero_point), -128, 127)
        xq = ((q - ii.zero_point) * ii.scale).astype(np.float32)
        y = self._model.compute(np.ascontiguousarray(xq.transpose(0, 2, 3, 1)))
        yq = ((np.clip(np.rint(y / oi.scale + oi.zero_point), -128, 127) - oi.zero_point) * oi.scale).astype(np.float32)
        yq = yq.transpose(0, 3, 1, 2)  # NHWC -> NCHW, as the ONNX graph gives it
        return yq.reshape(yq.shape[0], -1) if self._model.spec.get("flat_output") else np.ascontiguousarray(yq)

    def __call__(self, *inputs: Any) -> np.ndarray:
        x = np.asarray(inputs[0], np.float32)
        if len(inputs) != 1 or x.shape[0] != 1:
            raise ValueError(f"a compiled model takes one sample per call (batch dim 1), got {x.shape}; use .batch()")
        self.calls += 1
        self.samples += 1
        return self._one(x)

    def batch(self, *inputs: Any) -> list[np.ndarray]:
        if len(inputs) != 1:
            raise ValueError("batch() takes one array per model input (this model has one), not one per sample")
        x = np.asarray(inputs[0], np.float32)
        self.calls += 1
        self.samples += x.shape[0]
        return [self._one(x[k : k + 1]) for k in range(x.shape[0])]


def load(file: str, *, name: str = "", core_allocation: int | str | None = None) -> Operator:
    """Load a compiled model (``.axm``)."""
    return Operator(str(file), core_allocation)
