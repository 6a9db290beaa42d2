"""Inference backends behind one :class:`Runner` protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..errors import ConfigError, RuntimeBackendError
from ..models import ModelCard
from .base import Runner
from .emulated import EmulatedRunner
from .onnx import OnnxRunner, OrtConfig

Backend = Literal["onnxruntime", "emulated", "metis"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "emulated", "metis")

__all__ = ["BACKENDS", "EmulatedRunner", "OnnxRunner", "OrtConfig", "Runner", "make_runners"]


def make_runners(
    card: ModelCard,
    backend: str = "onnxruntime",
    *,
    instances: int = 1,
    batch: int = 1,
    ort: OrtConfig | None = None,
    latency_s: float = 0.0,
) -> Sequence[Runner]:
    """Build ``instances`` runners of ``backend`` for ``card`` (each used by one device thread)."""
    if instances < 1:
        raise ConfigError("instances must be >= 1")
    if backend == "onnxruntime":
        if ort is None and instances > 1:
            import os

            ort = OrtConfig(intra_op_threads=max(1, (os.cpu_count() or 1) // instances))
        return [OnnxRunner(card, batch=batch, config=ort) for _ in range(instances)]
    if backend == "emulated":
        return [
            EmulatedRunner(card.n_bands, card.patch_size, len(card.classes), batch=batch, latency_s=latency_s)
            for _ in range(instances)
        ]
    if backend == "metis":
        try:
            from .metis import make_metis_runners
        except ImportError as err:  # pragma: no cover - depends on the SDK
            raise RuntimeBackendError(str(err)) from err
        return make_metis_runners(card, instances=instances if instances > 1 else None)
    raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
