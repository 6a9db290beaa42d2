"""A fake of ``axelera.runtime`` that follows the interface documented in ../shared/metis/METIS.md.

Tensors are int8, NHWC and padded (channels padded to a multiple of 8, as an undocumented case the
host must read from TensorInfo); ``double_buffer=True`` returns the result of the call two calls back.
The "model" is pixelwise: class 1 (cloud) where input channel 0 is positive, else class 0.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    unpadded_shape: tuple[int, ...]
    padding: list[tuple[int, int]]
    scale: float
    zero_point: int


class Model:
    def __init__(self, path: str) -> None:
        with open(path) as f:
            spec = json.load(f)
        b, c, size = spec["batch"], spec["channels"], spec["size"]
        cpad = (-c) % 8
        self._in = TensorInfo((b, size, size, c + cpad), (b, size, size, c), [(0, 0), (0, 0), (0, 0), (0, cpad)],
                              scale=0.05, zero_point=-3)
        self._out = TensorInfo((b, size, size + 2, 8), (b, size, size, 3), [(0, 0), (0, 0), (1, 1), (0, 5)],
                               scale=0.1, zero_point=2)

    def inputs(self) -> list[TensorInfo]:
        return [self._in]

    def outputs(self) -> list[TensorInfo]:
        return [self._out]


class Instance:
    def __init__(self, model: Model, double_buffer: bool) -> None:
        self.model = model
        self.calls = 0
        self._queue: deque[np.ndarray] = deque()
        self._lag = 2 if double_buffer else 0

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        ii, oi = self.model._in, self.model._out
        q = inputs[0]
        assert q.dtype == np.int8 and q.shape == ii.shape
        x = (q[..., : ii.unpadded_shape[3]].astype(np.float32) - ii.zero_point) * ii.scale  # NHWC
        logits = np.zeros(oi.unpadded_shape, np.float32)
        logits[..., 1] = np.where(x[..., 0] > 0, 5.0, -5.0)
        qo = np.full(oi.shape, oi.zero_point, np.int8)
        qo[:, :, 1:-1, :3] = np.clip(np.rint(logits / oi.scale + oi.zero_point), -128, 127).astype(np.int8)
        self._queue.append(qo)
        self.calls += 1
        if len(self._queue) > self._lag:
            outputs[0][...] = self._queue.popleft()
        else:
            outputs[0][...] = 77  # stale garbage while the pipeline fills


class Connection:
    def __init__(self) -> None:
        self.instances: list[Instance] = []

    def load_model_instance(self, model: Model, num_sub_devices: int = 1, aipu_cores: int = 1,
                            double_buffer: bool = False) -> Instance:
        inst = Instance(model, double_buffer)
        self.instances.append(inst)
        return inst


class Context:
    def __init__(self) -> None:
        self.connections: list[Connection] = []

    def list_devices(self) -> list[str]:
        return ["metis-0:1:0"]

    def device_connect(self, device: object = None, num_sub_devices: int = 1) -> Connection:
        conn = Connection()
        self.connections.append(conn)
        return conn

    def load_model(self, path: str) -> Model:
        return Model(path)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
