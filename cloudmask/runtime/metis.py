"""Axelera Metis backend over ``axelera.runtime`` (Voyager SDK), as ../shared/metis/METIS.md documents it.

Host-side tensor logic lives in pure functions (quantize + pad + NCHW->NHWC on the way in; unpad +
dequantize + NHWC->NCHW on the way out) so it is tested without hardware against a fake that follows
the documented interface. **Not run on Metis hardware**: see the README's Metis section.

One :class:`MetisRunner` per model instance, each used by one engine thread. A model compiled with
``aipu_cores_used=4, multicore_mode=batch`` is one instance whose input batch is 4; a single-core
compile runs as 4 instances of batch 1. With ``double_buffer`` the device returns the result of the
call before the previous one; the runner declares ``lag = 2`` and the engine pairs outputs with
inputs accordingly and drains at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RuntimeBackendError
from ..models import ModelCard
from .shapes import runner_shapes

log = logging.getLogger(__name__)

SDK_HINT = (
    "the metis backend needs Axelera's Voyager SDK (`axelera.runtime`), which is not on PyPI: install it "
    "from Axelera's SDK installer on a machine with a Metis board, then compile the model with "
    "`cloudmask metis export` + the generated compile.py, and set `metis_model: compiled_model/model.json` "
    "in the exported card"
)


def _import_runtime() -> Any:
    try:
        from axelera import runtime  # type: ignore[import-not-found]
    except ImportError as err:
        raise RuntimeBackendError(SDK_HINT) from err
    return runtime


# ------------------------------------------------------------------------------ pure tensor logic

def quantize_input(x: np.ndarray, info: Any) -> np.ndarray:
    """Float NCHW -> int8 NHWC padded as ``info`` (TensorInfo) says; padding filled with the zero point."""
    q = np.clip(np.rint(x / info.scale + info.zero_point), -128, 127).astype(np.int8)
    q = np.ascontiguousarray(np.transpose(q, (0, 2, 3, 1)))  # NCHW -> NHWC
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
    """int8 NHWC padded -> float32 NCHW: remove padding, ``(q - zero_point) * scale``, transpose."""
    sl = tuple(slice(int(a), int(dim) - int(b)) for (a, b), dim in zip(info.padding, q.shape, strict=True))
    x = (q[sl].astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


# ------------------------------------------------------------------------------ runner

class MetisRunner:
    """One model instance on a Metis device (one thread uses it)."""

    def __init__(self, instance: Any, model: Any, card: ModelCard, double_buffer: bool = True) -> None:
        self._inst = instance
        self.card = card
        self._in_info = model.inputs()[0]
        self._out_info = model.outputs()[0]
        n, h, w, c = self._in_info.unpadded_shape  # NHWC
        self._shape = (int(n), int(c), int(h), int(w))
        if card.kind == "pixel" and h * w == 1:
            raise RuntimeBackendError(
                f"model '{card.name}' is a pixel model compiled for one pixel per call; export it folded "
                "(`cloudmask metis export --model CARD`, many pixels per call) and use the exported card"
            )
        expected = runner_shapes(card, int(n))[0]
        if self._shape != expected:
            raise RuntimeBackendError(
                f"compiled model input {self._in_info.unpadded_shape} (NHWC) does not match card "
                f"'{card.name}' ({card.n_bands} bands, input {list(expected)} NCHW)"
            )
        self._inputs = [np.zeros(self._in_info.shape, np.int8)]
        self._outputs = [np.zeros(self._out_info.shape, np.int8)]
        #: calls between an input and its output (the engine pairs and drains accordingly)
        self.lag = 2 if double_buffer else 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._inputs[0][...] = quantize_input(batch, self._in_info)
        self._inst.run(self._inputs, self._outputs)  # blocking; outputs written in place
        return dequantize_output(self._outputs[0], self._out_info)  # a copy: buffers are reused

    def close(self) -> None:
        self._inst = None


class _Device:
    """Keeps the SDK context and connection alive as long as any runner uses them."""

    def __init__(self, ctx: Any, conn: Any) -> None:
        self.ctx, self.conn = ctx, conn


def make_metis_runners(
    card: ModelCard, instances: int | None = None, *, model_path: Path | None = None, double_buffer: bool = True
) -> Sequence[MetisRunner]:
    """Connect to the first Metis device and load ``4 // batch`` instances of the compiled model.

    The compiled ``model.json`` comes from ``model_path`` or the card's ``metis_model`` field. The
    compiled batch ``B`` (4 for ``multicore_mode=batch``) is read from the model's input shape.
    """
    rt = _import_runtime()
    path = model_path or card.extra.get("metis_model")
    if not path:
        raise RuntimeBackendError(
            f"model card '{card.name}' has no 'metis_model' (path of compiled_model/model.json); " + SDK_HINT
        )
    ctx = rt.Context()
    model = ctx.load_model(str(path))
    batch = int(model.inputs()[0].shape[0])
    n = instances or max(1, 4 // batch)
    conn = ctx.device_connect(device=None, num_sub_devices=batch * n)
    device = _Device(ctx, conn)
    runners = []
    for _ in range(n):
        inst = conn.load_model_instance(model, num_sub_devices=batch, aipu_cores=batch, double_buffer=double_buffer)
        r = MetisRunner(inst, model, card, double_buffer=double_buffer)
        r._device = device  # type: ignore[attr-defined]
        runners.append(r)
    log.info("metis: %d instance(s) of batch %d from %s", n, batch, path)
    return runners
