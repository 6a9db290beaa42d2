"""Inference backends behind one :class:`Runner` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..errors import ConfigError, RuntimeBackendError
from ..models import ModelCard
from .base import Runner
from .emulated import EmulatedRunner
from .onnx import OnnxRunner, OrtConfig
from .openvino import PRECISIONS, OvConfig
from .shapes import PIXEL_BLOCK, fold_of, runner_shapes, stack_of

Backend = Literal["onnxruntime", "openvino", "emulated", "metis"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "emulated", "metis")

__all__ = ["BACKENDS", "PIXEL_BLOCK", "PRECISIONS", "EmulatedRunner", "OnnxRunner", "OrtConfig", "OvConfig", "Runner",
           "fold_of", "make_runners", "ov_config", "runner_shapes", "stack_of"]


def make_runners(
    card: ModelCard,
    backend: str = "onnxruntime",
    *,
    instances: int | None = None,
    batch: int = 1,
    ort: OrtConfig | None = None,
    latency_s: float = 0.0,
    block: int | None = None,
    ov: OvConfig | None = None,
) -> Sequence[Runner]:
    """Build ``instances`` runners of ``backend`` for ``card`` (each used by one device thread).

    ``batch`` is patches per call for patch models; ``block`` pixels per call for pixel models whose
    graph leaves ``N`` open (default :data:`PIXEL_BLOCK`; a folded card's fold decides).

    ``instances=None`` chooses: for ONNX Runtime on CPU, two sessions sharing the cores (two batch-1
    sessions of one thread each kept 2 cores busier than one session of two threads: about 55 vs 65 ms
    per patch in ``benchmarks/``); one instance otherwise. OpenVINO (``ov``: precision, threads, int8
    calibration) chooses instances and threads the same way (:mod:`~cloudmask.runtime.openvino`).
    """
    if instances is not None and instances < 1:
        raise ConfigError("instances must be >= 1")
    if backend == "onnx":  # short for onnxruntime (as on the command line)
        backend = "onnxruntime"
    if backend == "onnxruntime":
        import os

        cpus = os.cpu_count() or 1
        if instances is None:
            instances = 2 if cpus >= 2 and not _gpu_providers(ort) else 1
        if ort is None and instances > 1:
            ort = OrtConfig(intra_op_threads=max(1, cpus // instances))
        return [OnnxRunner(card, batch=batch, config=ort, block=block) for _ in range(instances)]
    if ov is not None and ov.precision != "auto" and backend != "openvino":
        raise ConfigError(f"precision {ov.precision} applies to the openvino backend; drop it or use "
                          "backend openvino (--backend openvino)")
    if backend == "openvino":
        from .openvino import make_openvino_runners

        return make_openvino_runners(card, instances=instances, batch=batch, block=block, cfg=ov)
    if backend == "emulated":
        return [EmulatedRunner.for_card(card, batch, latency_s, block) for _ in range(instances or 1)]
    if backend == "metis":
        try:
            from .metis import make_metis_runners
        except ImportError as err:  # pragma: no cover - depends on the SDK
            raise RuntimeBackendError(str(err)) from err
        return make_metis_runners(card, instances=instances)  # None: 4 // compiled batch
    raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


def ov_config(precision: str = "auto", calibration: str | Path | None = None, threads: int = 0) -> OvConfig | None:
    """:class:`OvConfig` of these options (for ``backend="openvino"``), or None when all are defaults."""
    if precision == "auto" and calibration is None and not threads:
        return None
    return OvConfig(precision=precision, threads=threads, calibration=None if calibration is None else str(calibration))


def _gpu_providers(ort: OrtConfig | None) -> bool:
    """Whether ONNX Runtime would run on an accelerator provider (then one session is best)."""
    import onnxruntime

    wanted = ort.providers if ort is not None and ort.providers else onnxruntime.get_available_providers()
    return any(p != "CPUExecutionProvider" for p in wanted if p in onnxruntime.get_available_providers())
