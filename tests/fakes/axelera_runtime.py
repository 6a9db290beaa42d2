"""A fake of ``axelera.runtime`` that follows the interface documented in ../shared/metis/METIS.md.

Tensors are int8, NHWC and padded (channels padded to a multiple of 8, as an undocumented case the
host must read from TensorInfo); ``double_buffer=True`` returns the result of the call two calls back.
The "model" is pixelwise: class 1 (cloud) where input channel 0 is positive, else class 0 — unless the
compiled-model JSON names an ``onnx`` graph (float, NCHW, e.g. a batch-folded pixel model), which then
computes the logits from the dequantized input, as the device would run the compiled graph.

Compiled-model JSON: ``batch``, ``channels``, ``size`` (or ``height`` and ``width``), optional
``classes`` (3), ``onnx``, ``in_scale`` (0.05), ``in_zero_point`` (-3), ``out_scale`` (0.1).
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
        b, c = spec["batch"], spec["channels"]
        h, w = spec.get("height", spec.get("size")), spec.get("width", spec.get("size"))
        k = int(spec.get("classes", 3))
        cpad, kpad = (-c) % 8, (-k) % 8 or 8
        self._in = TensorInfo((b, h, w, c + cpad), (b, h, w, c), [(0, 0), (0, 0), (0, 0), (0, cpad)],
                              scale=float(spec.get("in_scale", 0.05)), zero_point=int(spec.get("in_zero_point", -3)))
        self._out = TensorInfo((b, h, w + 2, k + kpad), (b, h, w, k), [(0, 0), (0, 0), (1, 1), (0, kpad)],
                               scale=float(spec.get("out_scale", 0.1)), zero_point=2)
        self.session = None
        if spec.get("onnx"):
            import onnxruntime

            self.session = onnxruntime.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])

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
        if self.model.session is not None:
            sess = self.model.session
            nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            logits = sess.run(None, {sess.get_inputs()[0].name: nchw})[0].transpose(0, 2, 3, 1)
        else:
            logits = np.zeros(oi.unpadded_shape, np.float32)
            logits[..., 1] = np.where(x[..., 0] > 0, 5.0, -5.0)
        qo = np.full(oi.shape, oi.zero_point, np.int8)
        qo[:, :, 1:-1, : oi.unpadded_shape[3]] = np.clip(np.rint(logits / oi.scale + oi.zero_point), -128, 127).astype(np.int8)
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
