"""Emulated low-level ``axelera.runtime`` (see the package docstring for the docs it follows).

Tensors are int8, NHWC and padded: input channels to a multiple of 8, output width by one column each
side and channels to a multiple of 8 (the docs give padding only through ``TensorInfo.padding``, so a
host that reads it there works with any). A Metis has 4 AIPU cores: ``device_connect(num_sub_devices=n)``
reserves ``n`` of them until the Connection (or its Context) is released, and refuses more
(``DeviceInUse``). ``load_model_instance`` checks ``num_sub_devices`` and ``aipu_cores`` against the
Connection and the cores the model was compiled for. The emulated device runs the model's float ONNX
graph on the dequantized input (ONNX Runtime), or, without one, scores class 1 where input channel 0
is positive. ``model.json`` fields: see :func:`cloudmask.metis.fake_sdk.write_compiled`.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: AIPU cores of one Metis device (voyager-sdk axruntime-py.md, DeviceInfo.subdevice_count).
CORES = 4


class ConnectionError(Exception):  # noqa: A001 - the SDK's name
    """No device could be connected."""


class DeviceInUse(Exception):
    """The requested AIPU cores are reserved by another connection."""


class InvalidArgument(Exception):
    """A parameter does not match the model or the connection."""


@dataclass
class TensorInfo:
    """As documented: ``shape`` padded, ``unpadded_shape``, ``padding`` (numpy.pad form), ``scale``, ``zero_point``."""

    shape: tuple[int, ...]
    unpadded_shape: tuple[int, ...]
    padding: list[tuple[int, int]]
    scale: float = 1.0
    zero_point: int = 0
    dtype: Any = np.int8
    name: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class DeviceInfo:
    name: str
    subdevice_count: int = CORES
    board_type: str = "pcie"
    firmware_version: str = "emulated"


@dataclass
class _Device:
    info: DeviceInfo
    reserved: int = 0


#: The emulated machine: one Metis board (tests may clear it to emulate a host without boards).
DEVICES: list[_Device] = [_Device(DeviceInfo("metis-0:1:0"))]


def reset(boards: int = 1) -> None:
    """Forget every reservation; emulate ``boards`` Metis boards."""
    DEVICES[:] = [_Device(DeviceInfo(f"metis-0:{k + 1}:0")) for k in range(boards)]


class Object:
    def __init__(self, context: Context | None) -> None:
        self.context = context
        self.released = False
        self._children: list[Object] = []

    def release(self) -> None:
        for child in self._children:
            child.release()
        self.released = True


class Model(Object):
    """A compiled model (``model.json`` of the emulation): ``inputs()``, ``outputs()``, pre/postamble graphs."""

    def __init__(self, path: str, context: Context | None = None) -> None:
        super().__init__(context)
        self.path = Path(path)
        spec = json.loads(self.path.read_text())
        b, c = int(spec["batch"]), int(spec["channels"])
        h, w = int(spec.get("height", spec.get("size", 1))), int(spec.get("width", spec.get("size", 1)))
        self.spec = spec
        self.batch, self.cores = b, int(spec.get("cores", b))
        cpad = (-c) % 8
        self._in = TensorInfo((b, h, w, c + cpad), (b, h, w, c), [(0, 0), (0, 0), (0, 0), (0, cpad)],
                              scale=float(spec.get("in_scale", 0.05)), zero_point=int(spec.get("in_zero_point", -3)))
        if spec.get("out_shape"):  # e.g. a classifier's [B, 1, 1, K]
            ob, oh, ow, k = (int(v) for v in spec["out_shape"])
        else:
            ob, oh, ow, k = b, h, w, int(spec.get("classes", 3))
        kpad = (-k) % 8 or 8
        self._out = TensorInfo((ob, oh, ow + 2, k + kpad), (ob, oh, ow, k), [(0, 0), (0, 0), (1, 1), (0, kpad)],
                               scale=float(spec.get("out_scale", 0.1)), zero_point=2)
        #: documented properties: paths relative to the model directory, empty when the compiler left none
        self.preamble_graph = str(spec.get("preamble_graph", ""))
        self.postamble_graph = str(spec.get("postamble_graph", ""))
        self.input_tensor_layout = "NHWC"
        self.session = None
        if spec.get("onnx"):
            import onnxruntime

            self.session = onnxruntime.InferenceSession(spec["onnx"], providers=["CPUExecutionProvider"])

    def inputs(self) -> list[TensorInfo]:
        return [self._in]

    def outputs(self) -> list[TensorInfo]:
        return [self._out]

    def compute(self, x_nhwc: np.ndarray) -> np.ndarray:
        """Float NHWC in -> float NHWC out (the emulated device's arithmetic)."""
        if self.session is not None:
            nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
            inp = self.session.get_inputs()[0]
            if inp.shape and inp.shape[0] == 1 and nchw.shape[0] > 1:  # a batch-1 graph compiled for batch B
                y = np.concatenate([self.session.run(None, {inp.name: nchw[k : k + 1]})[0]
                                    for k in range(nchw.shape[0])])
            else:
                y = self.session.run(None, {inp.name: nchw})[0]
            return y.reshape(self._out.unpadded_shape[0], -1, 1, 1).transpose(0, 2, 3, 1) if y.ndim == 2 \
                else y.transpose(0, 2, 3, 1)
        logits = np.zeros(self._out.unpadded_shape, np.float32)
        logits[..., 1] = np.where(x_nhwc[..., 0] > 0, 5.0, -5.0)
        return logits


class ModelInstance(Object):
    """``run(inputs, outputs)``: blocking, outputs written in place; one thread per instance."""

    def __init__(self, model: Model, connection: Connection, double_buffer: bool) -> None:
        super().__init__(connection.context)
        self.model, self.connection = model, connection
        self.calls = 0
        self._queue: deque[np.ndarray] = deque()
        self._lag = 2 if double_buffer else 0

    def run(self, inputs: list[np.ndarray], outputs: list[np.ndarray]) -> None:
        if self.released or self.connection.released:
            raise InvalidArgument("model instance used after release")
        ii, oi = self.model._in, self.model._out
        q = inputs[0]
        if q.dtype != np.int8 or tuple(q.shape) != ii.shape:
            raise InvalidArgument(f"input must be int8 {ii.shape}, got {q.dtype} {q.shape}")
        x = (q[..., : ii.unpadded_shape[3]].astype(np.float32) - ii.zero_point) * ii.scale  # NHWC
        y = self.model.compute(x)
        qo = np.full(oi.shape, oi.zero_point, np.int8)
        qo[:, :, 1:-1, : oi.unpadded_shape[3]] = np.clip(np.rint(y / oi.scale + oi.zero_point), -128, 127)
        self._queue.append(qo)
        self.calls += 1
        if len(self._queue) > self._lag:
            outputs[0][...] = self._queue.popleft()
        else:
            outputs[0][...] = 77  # stale garbage while the double buffer fills


class Connection(Object):
    """``num_sub_devices`` AIPU cores of one device, reserved until released."""

    def __init__(self, context: Context, device: _Device, num_sub_devices: int) -> None:
        super().__init__(context)
        self.device, self.num_sub_devices = device, num_sub_devices
        self.instances: list[ModelInstance] = []

    def load_model_instance(self, model: Model, **kwargs: Any) -> ModelInstance:
        n = int(kwargs.get("num_sub_devices", 0))
        cores = int(kwargs.get("aipu_cores", 0))
        if n != self.num_sub_devices or cores != n:
            raise InvalidArgument(f"num_sub_devices={n}, aipu_cores={cores}: both must equal the connection's "
                                  f"{self.num_sub_devices} cores")
        if cores != model.cores:
            raise InvalidArgument(f"model compiled for {model.cores} core(s), loaded with aipu_cores={cores}")
        inst = ModelInstance(model, self, bool(kwargs.get("double_buffer", False)))
        self.instances.append(inst)
        self._children.append(inst)
        return inst

    def release(self) -> None:
        if not self.released:
            self.device.reserved -= self.num_sub_devices
        super().release()


class Context(Object):
    """The root object; a context manager releasing every child on exit."""

    def __init__(self) -> None:
        super().__init__(None)
        self.connections: list[Connection] = []
        self.models: list[Model] = []

    def list_devices(self) -> list[DeviceInfo]:
        return [d.info for d in DEVICES]

    def device_connect(self, device: object = None, num_sub_devices: int = 1, **kwargs: Any) -> Connection:
        if not DEVICES:
            raise ConnectionError("no Metis device found")
        if isinstance(device, int):
            dev = DEVICES[device]
        elif isinstance(device, str):
            dev = next(d for d in DEVICES if d.info.name == device)
        else:
            dev = next((d for d in DEVICES if CORES - d.reserved >= num_sub_devices), DEVICES[0])
        if not 1 <= num_sub_devices <= CORES:
            raise InvalidArgument(f"num_sub_devices must be 1..{CORES}, got {num_sub_devices}")
        if dev.reserved + num_sub_devices > CORES:
            raise DeviceInUse(f"{dev.info.name}: {dev.reserved} of {CORES} cores reserved, {num_sub_devices} more asked")
        dev.reserved += num_sub_devices
        conn = Connection(self, dev, num_sub_devices)
        self.connections.append(conn)
        self._children.append(conn)
        return conn

    def load_model(self, path: str) -> Model:
        model = Model(path, self)
        self.models.append(model)
        self._children.append(model)
        return model

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def write_compiled(
    path: str | Path,
    *,
    onnx: str | Path | None,
    input_shape: tuple[int, int, int, int],
    classes: int,
    batch: int = 1,
    cores: int | None = None,
    in_scale: float = 0.05,
    in_zero_point: int = 0,
    out_scale: float = 0.1,
    out_shape: tuple[int, ...] | None = None,
    flat_output: bool = False,
    preamble_graph: str = "",
    postamble_graph: str = "",
) -> Path:
    """Write an emulated compiled model (``model.json`` or ``*.axm``) for the float graph ``onnx``.

    ``input_shape`` is the exported graph's ``[1, C, H, W]``; ``batch`` the compiled runtime batch (4 for
    ``multicore_mode=batch``); ``cores`` the AIPU cores one instance uses (default ``batch``).
    """
    _, c, h, w = input_shape
    spec: dict[str, Any] = {
        "batch": batch, "channels": c, "height": h, "width": w, "classes": classes,
        "cores": cores or batch, "onnx": str(Path(onnx).resolve()) if onnx else "",
        "in_scale": in_scale, "in_zero_point": in_zero_point, "out_scale": out_scale,
        "preamble_graph": preamble_graph, "postamble_graph": postamble_graph,
    }
    if out_shape is not None:  # the device's NHWC output, when it is not [batch, H, W, classes]
        spec["out_shape"] = list(out_shape)
    if flat_output:  # the float graph returns [N, K] (a classifier): the op API hands that back
        spec["flat_output"] = True
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec, indent=1))
    return path
