"""Axelera Metis backend over the Voyager SDK's ``axelera.runtime``, both generations of its Python API.

**Not run on Metis hardware** (see the README's Metis section): every SDK call below follows the SDK's
documentation, cited where it is made, and is tested against the emulation in
:mod:`cloudmask.metis.fake_sdk`, which follows the same documents.

- Low level (SDK 1.6 onwards; ``model.json``): voyager-sdk ``docs/reference/apis/axruntime-py.md``. One
  ``Context`` (a context manager); per model instance its own ``device_connect(num_sub_devices=cores)``
  and ``load_model_instance(model, num_sub_devices=cores, aipu_cores=cores, double_buffer=...)``, as the
  doc's example does ("for parallel execution, create multiple Connection/ModelInstance pairs");
  ``cores`` is what the model was compiled for (its batch for ``multicore_mode=batch``, 1 for one-core
  replicas, 4 for one instance over all cores); ``4 // cores`` instances fill a device. Int8 NHWC padded
  tensors are quantized / padded / depadded / dequantized on the host as ``TensorInfo`` says; the model's
  ``preamble_graph`` / ``postamble_graph`` (ONNX, relative to the model directory) run on the host with
  ONNX Runtime before / after the device. ``close()`` releases each Connection; the last one the Context.
- SDK 1.8 ``axelera.runtime.op`` (``.axm``): voyager-sdk
  ``docs/reference/pipeline-builder/api/axelera.runtime.op.inference.md`` and its public client
  ultralytics ``ultralytics/nn/backends/axelera.py``: ``op.load(path).optimized()``; one sample per call,
  several through ``model.batch(x)`` with the whole ``[B, ...]`` array, which returns one result per
  sample (batch dim 1 each). Quantization, padding, layout and pre/postamble graphs are the SDK's.

The generation is picked by what is installed and what the card's ``metis_model`` names: a ``.axm`` (or
a directory holding one, found as the ultralytics client finds it) runs through ``op`` when it is
importable; a ``model.json`` through the low-level API.

A folded pixel model compiled with runtime batch ``B`` > 1 takes ``B`` folds per call: the runner's
input is ``[1, C, B*H, W]`` (the engine packs pixels row-major, so rows ``b*H .. (b+1)*H`` are fold ``b``)
and is split into ``[B, C, H, W]`` for the device; per-pixel models make this exact. A patch-stacked
scene filter (card ``patches_per_call: k``) runs at batch 1 and returns ``[1, k*K, 1, 1]``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelCardError, RuntimeBackendError
from ..models import ModelCard
from .shapes import fold_of, runner_shapes, stack_of

log = logging.getLogger(__name__)

#: AIPU cores of one Metis device (axruntime-py.md, ``DeviceInfo.subdevice_count``: "For Metis this is 4").
DEVICE_CORES = 4
API_LOW = "low-level axelera.runtime (Context, device_connect, load_model_instance)"
API_OP = "axelera.runtime.op (SDK 1.8: op.load(<model>.axm).optimized())"

SDK_HINT = (
    "the metis backend needs Axelera's Voyager SDK runtime (`axelera.runtime`; SDK 1.8: pip package "
    "`axelera-rt` from Axelera's index, with metis-dkms >= 1.6.2), which is not on PyPI: install it on a "
    "machine with a Metis board, compile the model with `cloudmask metis export` + the generated compile.py, "
    "and set `metis_model:` in the exported card (`cloudmask metis info` shows what is found)"
)


def _import_runtime() -> Any:
    try:
        from axelera import runtime  # type: ignore[import-not-found]
    except ImportError as err:
        raise RuntimeBackendError(SDK_HINT) from err
    return runtime


def _import_op() -> Any | None:
    """``axelera.runtime.op`` when installed (SDK 1.8), else None."""
    try:
        from axelera.runtime import op  # type: ignore[import-not-found]
    except ImportError:
        return None
    return op


def sdk_version(runtime: Any) -> str:
    """The installed runtime's version: the ``axelera-rt`` distribution (1.8), else the module's ``__version__``."""
    from importlib import metadata

    for dist in ("axelera-rt", "axelera-runtime"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(runtime, "__version__", "unknown"))


@dataclass
class SdkInfo:
    """What ``cloudmask metis info`` prints."""

    installed: bool
    version: str = ""
    api: str = ""
    devices: list[str] = field(default_factory=list)
    note: str = ""

    def format(self) -> str:
        if not self.installed:
            return f"Voyager SDK: not installed\n{self.note}"
        lines = [f"Voyager SDK runtime: {self.version}", f"API in use: {self.api}"]
        if self.devices:
            lines.append(f"devices: {', '.join(self.devices)}")
        else:
            lines.append(f"devices: none ({self.note})")
        return "\n".join(lines)


def sdk_info() -> SdkInfo:
    """The installed SDK version, the API ``run --backend metis`` would use, and the Metis devices found."""
    try:
        rt = _import_runtime()
    except RuntimeBackendError as err:
        return SdkInfo(False, note=str(err))
    api = API_OP + " for .axm; " + API_LOW + " for model.json" if _import_op() is not None else API_LOW
    info = SdkInfo(True, sdk_version(rt), api)
    try:
        with rt.Context() as ctx:  # axruntime-py.md: Context as context manager; list_devices() -> [DeviceInfo]
            devices = list(ctx.list_devices())
    except Exception as err:  # noqa: BLE001 - the SDK raises its own types (ConnectionError, InternalError, ...)
        info.note = f"listing devices failed: {err}; check the board with `axdevice` and the metis-dkms driver"
        return info
    info.devices = [f"{d.name} ({getattr(d, 'subdevice_count', '?')} cores)" for d in devices]
    if not devices:
        info.note = "the runtime lists no Metis board: check it with `axdevice`, and that metis-dkms is loaded"
    return info


# ------------------------------------------------------------------------------ pure tensor logic

def quantize_input(x: np.ndarray, info: Any) -> np.ndarray:
    """Float NCHW -> int8 NHWC padded as ``info`` (TensorInfo) says; padding filled with the zero point.

    axruntime-py.md, TensorInfo: ``round(x / scale + zero_point)`` clipped to int8, then ``np.pad`` with
    ``info.padding`` and ``constant_values=zero_point``.
    """
    q = np.clip(np.rint(x / info.scale + info.zero_point), -128, 127).astype(np.int8)
    q = np.ascontiguousarray(np.transpose(q, (0, 2, 3, 1)))  # NCHW -> NHWC (input_tensor_layout: always NHWC)
    pads = [tuple(int(v) for v in p) for p in info.padding]
    if any(a or b for a, b in pads):
        q = np.pad(q, pads, mode="constant", constant_values=np.int8(info.zero_point))
    if tuple(q.shape) != tuple(info.shape):
        raise RuntimeBackendError(
            f"input of shape {x.shape} does not fit the compiled model's input {info.unpadded_shape} "
            f"(padded {info.shape}); re-export the model with the card's patch size and bands"
        )
    return q


def dequantize_output(q: np.ndarray, info: Any) -> np.ndarray:
    """int8 padded -> float32: remove padding, ``(q - zero_point) * scale`` (axruntime-py.md, TensorInfo);
    a 4-D NHWC result is transposed to NCHW."""
    sl = tuple(slice(int(a), int(dim) - int(b)) for (a, b), dim in zip(info.padding, q.shape, strict=True))
    x = (q[sl].astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))) if x.ndim == 4 else x


# ------------------------------------------------------------------------------ shapes

@dataclass(frozen=True)
class _Layout:
    """The engine's view (``input_shape``) and the device's ``[B, C, H, W]`` of one call."""

    card: ModelCard
    batch: int

    @property
    def folded(self) -> tuple[int, int] | None:
        return fold_of(self.card)

    def device_shape(self) -> tuple[int, ...]:
        fold = self.folded
        if fold is not None:
            return (self.batch, self.card.n_bands, *fold)
        return runner_shapes(self.card, self.batch)[0]

    def engine_shape(self) -> tuple[int, ...]:
        fold = self.folded
        if fold is not None:
            return (1, self.card.n_bands, self.batch * fold[0], fold[1])
        return self.device_shape()

    def to_device(self, x: np.ndarray) -> np.ndarray:
        fold = self.folded
        if fold is None or self.batch == 1:
            return x
        c = self.card.n_bands
        return np.ascontiguousarray(x.reshape(c, self.batch, fold[0], fold[1]).transpose(1, 0, 2, 3))

    def from_device(self, y: np.ndarray) -> np.ndarray:
        k = len(self.card.classes)
        stack = stack_of(self.card)
        if stack is not None:  # a patch-stacked classifier: [1, k*K, 1, 1] (cloudmask.runtime.shapes.stack_of)
            if y.size != stack * k:
                raise RuntimeBackendError(f"compiled model returns {y.size} scores per call; card '{self.card.name}' "
                                          f"stacks {stack} patches of {k} classes")
            return np.ascontiguousarray(y.reshape(1, stack * k, 1, 1))
        if self.card.kind == "patch-classifier":
            y = y.reshape(self.batch, -1)
            if y.shape[1] != k:
                raise RuntimeBackendError(f"compiled model returns {y.shape[1]} scores per patch; card "
                                          f"'{self.card.name}' names {k} classes")
            return y
        fold = self.folded
        if fold is None or self.batch == 1:
            return y
        return np.ascontiguousarray(y.transpose(1, 0, 2, 3).reshape(1, k, self.batch * fold[0], fold[1]))


def _check_pixel(card: ModelCard, h: int, w: int) -> None:
    if card.kind == "pixel" and (fold_of(card) is None or h * w == 1):
        raise RuntimeBackendError(
            f"model '{card.name}' is a pixel model compiled for one pixel per call; export it folded "
            "(`cloudmask metis export --model CARD`, many pixels per call) and use the exported card"
        )


def _host_graph(model_dir: Path, rel: str, what: str) -> Any | None:
    """An ONNX Runtime session for the model's preamble/postamble graph (path relative to the model directory)."""
    if not rel:
        return None
    import onnxruntime

    path = model_dir / rel
    if not path.is_file():
        raise RuntimeBackendError(f"the compiled model names a {what} graph {path} that does not exist; "
                                  "copy the whole compiler output directory")
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_host(session: Any | None, x: np.ndarray) -> np.ndarray:
    """Run a preamble/postamble graph on NCHW ``x``; NHWC when the graph's declared input says so (the docs
    call the AIPU side NHWC and leave the host graphs' layout to the graphs themselves)."""
    if session is None:
        return x
    inp = session.get_inputs()[0]
    dims = list(inp.shape)
    nhwc = False
    if x.ndim == 4 and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
        _, c, h, w = x.shape
        nhwc = dims[1:] == [h, w, c] and dims[1:] != [c, h, w]
    out = session.run(None, {inp.name: np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc else x})[0]
    if nhwc and out.ndim == 4:  # back to NCHW, as the engine and the card's graph have it
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _as_nchw(x: np.ndarray, info: Any) -> np.ndarray:
    """A preamble's output as NCHW for :func:`quantize_input` (it may already be the device's NHWC)."""
    nhwc = tuple(int(v) for v in info.unpadded_shape)
    if x.ndim == 4 and tuple(x.shape) == nhwc and nhwc != (nhwc[0], nhwc[3], nhwc[1], nhwc[2]):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x


# ------------------------------------------------------------------------------ low-level runner

class _Session:
    """One ``Context`` shared by the runners of one model; released when the last runner closes."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.open = 0
        self._lock = threading.Lock()

    def opened(self) -> None:
        with self._lock:
            self.open += 1

    def closed(self) -> None:
        with self._lock:
            self.open -= 1
            last = self.open == 0
        if last:
            self.ctx.__exit__(None, None, None)  # axruntime-py.md: releases every Model, Connection, ModelInstance


class MetisRunner:
    """One model instance on its own Connection (one thread uses it), over the low-level API."""

    def __init__(self, instance: Any, connection: Any, model: Any, card: ModelCard, *, model_dir: Path,
                 double_buffer: bool = True, session: _Session | None = None) -> None:
        self.card = card
        self._inst, self._conn, self._session = instance, connection, session
        self._in_info = model.inputs()[0]
        self._out_info = model.outputs()[0]
        n, h, w, c = (int(v) for v in self._in_info.unpadded_shape)  # NHWC
        # axruntime-py.md, Model properties: preamble before the AIPU, postamble after depad + dequantize (NCHW)
        self._pre = _host_graph(model_dir, str(getattr(model, "preamble_graph", "") or ""), "preamble")
        self._post = _host_graph(model_dir, str(getattr(model, "postamble_graph", "") or ""), "postamble")
        self._layout = _Layout(card, n)
        if self._pre is None:
            _check_pixel(card, h, w)
            expected = self._layout.device_shape()
            if (n, c, h, w) != tuple(expected):
                raise RuntimeBackendError(
                    f"compiled model input {self._in_info.unpadded_shape} (NHWC) does not match card "
                    f"'{card.name}' ({card.n_bands} bands, input {list(expected)} NCHW); export and compile "
                    "the card's model again"
                )
        # axruntime-py.md, ModelInstance.run: allocate buffers once, reuse them for every call
        self._inputs = [np.zeros(self._in_info.shape, np.int8)]
        self._outputs = [np.zeros(self._out_info.shape, np.int8)]
        #: calls between an input and its output (axruntime double buffering: results two calls late)
        self.lag = 2 if double_buffer else 0
        if session is not None:
            session.opened()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._layout.engine_shape()

    @property
    def compiled_batch(self) -> int:
        return self._layout.batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._layout.to_device(batch)
        if self._pre is not None:
            x = _as_nchw(_run_host(self._pre, x), self._in_info)
        self._inputs[0][...] = quantize_input(x, self._in_info)
        self._inst.run(self._inputs, self._outputs)  # axruntime-py.md: blocking; outputs written in place
        y = _run_host(self._post, dequantize_output(self._outputs[0], self._out_info))  # a copy: buffers reused
        return self._layout.from_device(y)

    def close(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.release()  # axruntime-py.md, Object.release: the Connection and its ModelInstance
        finally:
            self._inst = self._conn = None
            if self._session is not None:
                self._session.closed()


# ------------------------------------------------------------------------------ SDK 1.8 op runner

class MetisOpRunner:
    """A compiled ``.axm`` through SDK 1.8's ``axelera.runtime.op``: float in, float out, ``samples`` per call."""

    lag = 0

    def __init__(self, model: Any, card: ModelCard, samples: int = 1) -> None:
        self.card = card
        self._model = model
        self._layout = _Layout(card, samples)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._layout.engine_shape()

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = self._layout.to_device(batch)
        if x.shape[0] == 1:
            y = np.asarray(self._model(x), np.float32)  # ultralytics axelera.py: one sample per call
        else:
            # ultralytics axelera.py: batch() takes the whole [B, ...] array (one argument per model input) and
            # returns one result per sample, each keeping its batch dim of 1; the SDK's scheduler overlaps
            # host quantization with device work
            y = np.concatenate([np.asarray(r, np.float32) for r in self._model.batch(x)], axis=0)
        return self._layout.from_device(y)

    def close(self) -> None:
        self._model = None  # the op docs document no release; the SDK frees the model with the object


# ------------------------------------------------------------------------------ factory

def _metis_meta(card: ModelCard) -> dict[str, Any]:
    meta = card.extra.get("metis")
    return dict(meta) if isinstance(meta, dict) else {}


def compiled_model_path(card: ModelCard, model_path: Path | str | None = None) -> Path:
    """The compiled model of ``card`` (``metis_model``, resolved relative to the card file when it was read)."""
    raw = model_path or card.extra.get("metis_model")
    if not raw:
        raise ModelCardError(
            f"model card '{card.name}' has no 'metis_model': set it to the compiled model (compiled/model.json, "
            "a .axm, or the compiler's output directory), relative to the card file; " + SDK_HINT
        )
    path = Path(str(raw)).expanduser()
    if not path.exists():
        raise ModelCardError(
            f"model card '{card.name}': metis_model {path} does not exist; compile the exported model "
            "(python compile.py --calibration CALIB) and point 'metis_model' at its output, relative to the card"
        )
    return path


def _pick(path: Path, op_available: bool) -> tuple[str, Path]:
    """``("op", axm)`` or ``("low", model.json)`` for a compiled-model path (file or directory)."""
    if path.is_dir():
        axm = next(iter(sorted(path.rglob("*.axm"))), None)  # as ultralytics axelera.py finds it
        js = next(iter(sorted(path.rglob("model.json"))), None)
        if axm is not None and (op_available or js is None):
            path = axm
        elif js is not None:
            path = js
        else:
            raise ModelCardError(f"no compiled model (*.axm or model.json) under {path}; compile the model first")
    if path.suffix == ".axm":
        if not op_available:
            raise RuntimeBackendError(
                f"{path} is a .axm archive, which the installed SDK runs only through `axelera.runtime.op` "
                "(SDK 1.8, pip package axelera-rt), not installed here: install SDK 1.8, or compile without "
                "--axm and point metis_model at compiled/model.json"
            )
        return "op", path
    return "low", path


def make_metis_runners(
    card: ModelCard, instances: int | None = None, *, model_path: Path | str | None = None,
    double_buffer: bool = True, samples_per_call: int | None = None,
) -> Sequence[MetisRunner | MetisOpRunner]:
    """Runners for ``card``'s compiled model: ``4 // cores`` low-level instances, or one ``op`` model.

    ``cores`` per instance comes from the card's ``metis.aipu_cores`` (written by ``cloudmask metis
    export --cores``), else the compiled batch. ``samples_per_call`` (op API only, default 4 for patch
    models, 1 for folded pixel models) is how many samples one call hands to ``model.batch``.
    """
    rt = _import_runtime()
    op = _import_op()
    kind, path = _pick(compiled_model_path(card, model_path), op is not None)
    if kind == "op" and op is not None:
        samples = samples_per_call or (1 if card.kind == "pixel" or stack_of(card) else DEVICE_CORES)
        models = []
        for _ in range(instances or 1):  # one model object per runner thread (the docs say nothing of sharing)
            try:
                models.append(op.load(str(path)).optimized())  # op.inference.md load(); ultralytics .optimized()
            except Exception as err:  # noqa: BLE001 - the SDK raises its own types
                raise RuntimeBackendError(f"the SDK could not load {path}: {err}; compile it with this SDK "
                                          "release (the .axm format is versioned)") from err
        log.info("metis: %s via %s, %d sample(s) per call", path, API_OP, samples)
        return [MetisOpRunner(m, card, samples) for m in models]
    ctx = rt.Context()
    ctx.__enter__()  # axruntime-py.md: Context is a context manager; _Session exits it after the last close
    session = _Session(ctx)
    runners: list[MetisRunner] = []
    try:
        devices = list(ctx.list_devices())
        if not devices:
            raise RuntimeBackendError("the Voyager runtime finds no Metis device (`axdevice` lists none): check "
                                      "the board and the metis-dkms driver, or use --backend onnxruntime")
        model = ctx.load_model(str(path))  # axruntime-py.md: load_model(path to model.json)
        batch = int(model.inputs()[0].shape[0])  # axruntime-py.md: "batch_size = model.inputs()[0].shape[0]"
        cores = int(_metis_meta(card).get("aipu_cores") or batch)
        per_device = int(getattr(devices[0], "subdevice_count", DEVICE_CORES) or DEVICE_CORES)
        n = instances or max(1, per_device // cores)
        for _ in range(n):
            # axruntime-py.md, load_model_instance example: one Connection per instance, num_sub_devices and
            # aipu_cores matching the model (its batch; here the cores it was compiled for)
            conn = ctx.device_connect(device=None, num_sub_devices=cores)
            inst = conn.load_model_instance(model, num_sub_devices=cores, aipu_cores=cores,
                                            double_buffer=double_buffer)
            runners.append(MetisRunner(inst, conn, model, card, model_dir=path.parent,
                                       double_buffer=double_buffer, session=session))
    except BaseException as err:
        for r in runners:
            r.close()
        if not runners:
            ctx.__exit__(None, None, None)
        if isinstance(err, RuntimeBackendError | ModelCardError) or not isinstance(err, Exception):
            raise
        raise RuntimeBackendError(f"metis: could not load {path} ({type(err).__name__}: {err}); "
                                  "`cloudmask metis info` shows the SDK and devices found") from err
    log.info("metis: %d instance(s) of batch %d on %d core(s) each from %s", n, batch, cores, path)
    return runners
