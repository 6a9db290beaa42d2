"""ONNX Runtime backend on a static-shape graph (the graph a Metis compile would take)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ModelError, RuntimeBackendError
from ..models import ModelCard
from . import graph_cache
from .shapes import PIXEL_BLOCK, fold_of, stack_of

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

#: Providers tried in this order when present; CPU is always last.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "OpenVINOExecutionProvider",
    "CPUExecutionProvider",
)


@dataclass(frozen=True)
class OrtConfig:
    """ONNX Runtime options: threads per session (0 = ORT's choice) and providers (None = best present)."""

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    providers: tuple[str, ...] | None = None
    graph_optimization: str = "all"
    #: Session config entries, e.g. ``{"session.intra_op.allow_spinning": "0"}``.
    extra: dict[str, str] = field(default_factory=dict)


def static_graph(onnx_path: Path, batch: int, height: int, width: int) -> onnx.ModelProto:
    """Load ``onnx_path`` and pin its input to ``(batch, C, height, width)`` and outputs to static dims.

    The ukis-csmask graphs declare a symbolic batch; pinning it lets the runtime (and a compiler)
    plan memory once. Raises :class:`ModelError` when the graph's input is not 4-D NCHW.
    """
    model = _load(onnx_path)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ModelError(f"{onnx_path}: expected one image input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ModelError(f"{onnx_path}: input must be 4-D NCHW, got {len(dims)} dims")
    channels = dims[1].dim_value
    for dim, value in zip(dims, (batch, channels, height, width), strict=True):
        if dim.dim_value and dim.dim_value != value and dim is not dims[0]:
            raise ModelError(
                f"{onnx_path}: input is fixed at {[d.dim_value for d in dims]}, cannot run {height}x{width} patches"
            )
        dim.ClearField("dim_param")
        dim.dim_value = value
    for out in model.graph.output:
        odims = out.type.tensor_type.shape.dim
        if len(odims) == 4:
            for dim, value in zip(odims, (batch, odims[1].dim_value, height, width), strict=True):
                if value and not dim.dim_value:  # a static dim stays (a stacked classifier's [1, k*K, 1, 1])
                    dim.ClearField("dim_param")
                    dim.dim_value = value
    return model


def _load(onnx_path: Path) -> onnx.ModelProto:
    import onnx

    try:
        return onnx.load(str(onnx_path))
    except Exception as err:  # onnx raises several types for corrupt files
        raise ModelError(f"cannot load ONNX model {onnx_path}: {err}; check the file or re-export it") from err


def pixel_graph(onnx_path: Path, block: int = PIXEL_BLOCK) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """Load a pixel model and pin a dynamic sample dimension ``N`` to ``block``; returns (model, input shape).

    Inputs: ``[N, C]``, ``[N, C, 1, 1]``, or a folded ``[1, C, H, W]`` (static). A static ``N`` is kept.
    """
    model = _load(onnx_path)
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise ModelError(f"{onnx_path}: expected one input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value for d in dims]
    ok = len(dims) == 2 or (len(dims) == 4 and (values[2:] == [1, 1] or (values[0] == 1 and all(values[2:]))))
    if not ok:
        raise ModelError(
            f"{onnx_path}: a pixel model takes [N, C], [N, C, 1, 1] or folded [1, C, H, W], got {values}; "
            "set the card's kind to match the model"
        )
    n = values[0] or block
    for d in (dims[0], *(o.type.tensor_type.shape.dim[0] for o in model.graph.output
                         if len(o.type.tensor_type.shape.dim) >= 1)):
        if not d.dim_value:
            d.ClearField("dim_param")
            d.dim_value = n
    return model, tuple(d.dim_value for d in dims)


class OnnxRunner:
    """A Runner over one ``onnxruntime.InferenceSession`` with a static batch.

    Patch models (segmentation, patch classifiers) run ``batch`` patches per call; pixel models run
    ``block`` pixels per call (a dynamic ``N`` is pinned to it; default :data:`PIXEL_BLOCK`).
    The pinned graph is cached on disk (:mod:`~cloudmask.runtime.graph_cache`): a later runner for the same
    model file and shape loads it without importing ``onnx``.
    """

    backend = "onnxruntime"
    precision = "f32"

    def __init__(self, card: ModelCard, batch: int = 1, config: OrtConfig | None = None,
                 block: int | None = None) -> None:
        import onnxruntime as ort

        cfg = config or OrtConfig()
        self.card = card
        self._stack = stack_of(card) or 1  # patches per call of a patch-stacked classifier: batch 1
        if self._stack > 1:
            batch = 1
        p = card.patch_size
        request: tuple[object, ...] = ("pixel", block or PIXEL_BLOCK) if card.kind == "pixel" else ("patch", batch, p, p)
        key = graph_cache.graph_key(card.onnx_path, request) if graph_cache.enabled() else None
        cached = graph_cache.read(key) if key else None
        session, shape = self._from_cache(ort, cfg, cached, batch, p) if cached else (None, ())
        if session is None:
            data, shape = self._pinned_graph(batch, block)
            session = self._open(ort, cfg, data)
            if key:
                graph_cache.write(key, data)
        else:
            log.debug("ONNX Runtime graph for %s from the cache (%s)", card.name, key)
            inp = session.get_inputs()[0].shape
            self._check(shape, inp[1] if len(inp) > 1 and isinstance(inp[1], int) else 0)
        self._session: Any = session
        self._input = session.get_inputs()[0].name
        self._shape = shape
        log.debug("ONNX Runtime session for %s, shape %s, providers %s", card.name, self._shape,
                  session.get_providers())

    def _pinned_graph(self, batch: int, block: int | None) -> tuple[bytes, tuple[int, ...]]:
        """Pin the model file's graph with ``onnx`` and check it against the card: (bytes, input shape)."""
        card, p = self.card, self.card.patch_size
        shape: tuple[int, ...]
        if card.kind == "pixel":
            model, shape = pixel_graph(card.onnx_path, block or PIXEL_BLOCK)
        else:
            model = static_graph(card.onnx_path, batch, p, p)
            shape = (batch, card.n_bands * self._stack, p, p)
        self._check(shape, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value)
        return model.SerializeToString(), shape

    def _check(self, shape: tuple[int, ...], channels: int) -> None:
        """The card against the graph: a pixel model's fold, then the input channels (0 = not fixed)."""
        card = self.card
        if card.kind == "pixel":
            fold = fold_of(card)
            if fold is not None and tuple(shape[2:]) != fold:
                raise ModelError(f"model '{card.name}': the card's fold {list(fold)} does not match the "
                                 f"ONNX input {list(shape)}; re-export or fix the card's 'fold'")
        if channels and channels != card.n_bands * self._stack:
            stacked = f" x {self._stack} patches per call" if self._stack > 1 else ""
            raise ModelError(
                f"model '{card.name}': the ONNX input has {channels} channels but the card lists "
                f"{card.n_bands} bands{stacked}; fix the card's 'bands' (or 'patches_per_call')"
            )

    def _from_cache(self, ort: Any, cfg: OrtConfig, data: bytes, batch: int,
                    p: int) -> tuple[Any, tuple[int, ...]]:
        """A session on cached graph bytes and its input shape; ``(None, ())`` when the entry is unusable."""
        try:
            session = self._open(ort, cfg, data)
        except ModelError as err:
            log.debug("graph cache entry for %s is unusable, rebuilding: %s", self.card.name, err)
            return None, ()
        dims = session.get_inputs()[0].shape
        if self.card.kind == "pixel":
            shape = tuple(d if isinstance(d, int) else 0 for d in dims)
            ok = len(shape) in (2, 4) and shape[0] > 0
        else:
            shape = (batch, self.card.n_bands * self._stack, p, p)
            ok = len(dims) == 4 and [dims[0], dims[2], dims[3]] == [batch, p, p]
        if not ok:
            log.debug("graph cache entry for %s has input %s, rebuilding", self.card.name, dims)
            return None, ()
        return session, shape

    def _open(self, ort: Any, cfg: OrtConfig, data: bytes) -> Any:
        """An ``InferenceSession`` on graph bytes with ``cfg``'s options and providers."""
        so = ort.SessionOptions()
        so.intra_op_num_threads = cfg.intra_op_threads
        so.inter_op_num_threads = cfg.inter_op_threads
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[cfg.graph_optimization]
        for k, v in cfg.extra.items():
            so.add_session_config_entry(k, v)
        available = ort.get_available_providers()
        providers = [p for p in (cfg.providers or PREFERRED_PROVIDERS) if p in available]
        if not providers:
            raise RuntimeBackendError(
                f"none of the ONNX Runtime providers {cfg.providers} is available (have: {available})"
            )
        try:
            return ort.InferenceSession(data, so, providers=providers)
        except Exception as err:
            raise ModelError(f"ONNX Runtime cannot load model '{self.card.name}': {err}") from err

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run(None, {self._input: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._session = None
