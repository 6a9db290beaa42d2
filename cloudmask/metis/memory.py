"""How much Metis memory a compiled model needs, and the largest pixel fold that fits.

The estimate (bytes) of one model instance::

    weights     = sum(weight elements) * 1 B (int8)  +  sum(bias elements) * 4 B (int32)
    activations = batch * max over nodes of (input + output activation elements of that node) * 1 B (int8)
    total       = weights + activations          per core: total / cores

``input + output of one node`` is the largest pair of live activations of a chain-like graph (a layer reads
one tensor while writing the next); for a folded pixel model both grow with the fold's ``H * W``.

The budget it is compared with (:func:`budget_bytes`) comes from the compiler's documented memory defaults
(voyager-sdk ``docs/reference/compiler/compiler-config-ref.md``; ../shared/metis/METIS.md): L1 4 MiB per
core (``l1_size_used``) less 512 KiB reserved (``l1_size_reserved``), L2 32 MiB shared (``l2_size_used``)
less 1,245,184 B reserved (``l2_size_reserved``) and 1 MiB per core for the tasklist
(``l2_size_reserved_tasklist``); an instance gets ``resources_used`` of L2 (0.25 for a one-core replica,
1.0 for an instance over all four cores). **Where the docs are silent** — how the compiler tiles
activations between L1 and L2, whether weights stream from DDR (``elf_in_ddr``, 1 GiB DDR budget),
channel padding of activations (``apply_pword_padding``; the PWORD size is not documented) — this
estimate makes no claim; it is an on-chip upper bound to plan a fold with, so ``--memory-mb`` stays a
parameter: measure on the device and pass what fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, ModelError
from ..models import ModelCard, load_model

if TYPE_CHECKING:
    import onnx

MIB = 1024 * 1024
#: compiler-config-ref.md defaults (bytes)
L1_PER_CORE = 4 * MIB
L1_RESERVED = 512 * 1024
L2_SHARED = 32 * MIB
L2_RESERVED = 1_245_184
L2_TASKLIST_PER_CORE = 1 * MIB
#: A 1504 x 1504 input failed the compiler's L1 tiling (METIS.md): folds stop at 1024 x 1024.
MAX_FOLD_SIDE = 1024


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one instance of a compiled model needs (see the module docstring for the formula)."""

    weights: int
    activations: int
    cores: int = 1

    @property
    def total(self) -> int:
        return self.weights + self.activations

    @property
    def per_core(self) -> int:
        return -(-self.total // self.cores)

    def format(self) -> str:
        return (f"{self.total / MIB:.2f} MiB per instance ({self.weights / MIB:.2f} MiB int8 weights + "
                f"{self.activations / MIB:.2f} MiB largest pair of live activations), "
                f"{self.per_core / MIB:.2f} MiB per core over {self.cores}")


def budget_bytes(cores: int, resources: float | None = None) -> int:
    """On-chip bytes an instance on ``cores`` cores may use, from the compiler's documented defaults."""
    share = resources if resources is not None else cores / 4
    l1 = cores * (L1_PER_CORE - L1_RESERVED)
    l2 = share * (L2_SHARED - L2_RESERVED) - cores * L2_TASKLIST_PER_CORE
    return int(l1 + l2)


def estimate(model: onnx.ModelProto, *, batch: int = 1, cores: int = 1) -> MemoryEstimate:
    """The memory estimate of a static ONNX graph (int8 weights + the largest pair of live activations)."""
    import numpy as np
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    inits = {t.name: t for t in g.initializer}
    sizes: dict[str, int] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(v > 0 for v in dims):
            sizes[vi.name] = int(np.prod(dims))
    weights = 0
    for node in g.node:
        for k, name in enumerate(node.input):
            if name in inits:
                n = int(np.prod(inits[name].dims)) if inits[name].dims else 1
                bias = node.op_type in ("Conv", "Gemm") and k == 2
                weights += n * (4 if bias else 1)
    pair = 0
    for node in g.node:
        live = [n for n in (*node.input, *node.output) if n and n not in inits]
        missing = [n for n in live if n not in sizes]
        if missing:
            raise ModelError(f"memory estimate: the shape of {missing[0]} is not static; export the model first")
        pair = max(pair, sum(sizes[n] for n in live))
    return MemoryEstimate(weights=weights, activations=batch * pair, cores=cores)


def fold_estimate(card: ModelCard | str | Path, fold: tuple[int, int], *, batch: int = 1,
                  cores: int = 1) -> MemoryEstimate:
    """The estimate of a pixel model folded to ``fold`` = (H, W) pixels per call."""
    per_pixel = _per_pixel(load_model(card))
    return MemoryEstimate(per_pixel.weights, per_pixel.activations * fold[0] * fold[1] * batch, cores)


def _per_pixel(card: ModelCard) -> MemoryEstimate:
    from .export import folded_model

    if card.kind != "pixel":
        raise ConfigError(f"a fold is for pixel models; '{card.name}' is a {card.kind} model")
    model, _, _ = folded_model(card, (1, 1))
    return estimate(model)


def candidate_folds() -> list[tuple[int, int]]:
    """Folds tried by ``--fold auto``, smallest first: squares and 1:2 rectangles of powers of two, 8 .. 1024."""
    out = []
    side = 8
    while side <= MAX_FOLD_SIDE:
        out.append((side, side))
        if 2 * side <= MAX_FOLD_SIDE:
            out.append((side, 2 * side))
        side *= 2
    return out


def auto_fold(card: ModelCard | str | Path, *, cores: int = 1, batch: int = 1,
              memory_mb: float | None = None) -> tuple[tuple[int, int], MemoryEstimate, int]:
    """The largest candidate fold whose estimate fits ``memory_mb`` MiB per instance (default: the on-chip
    budget of ``cores`` cores, :func:`budget_bytes`); returns (fold, its estimate, budget in bytes).
    ``cloudmask metis export --fold auto --memory-mb M`` exports the model at that fold.

    Raises :class:`ConfigError` when not even the smallest fold fits.
    """
    per_pixel = _per_pixel(load_model(card))
    budget = int(memory_mb * MIB) if memory_mb is not None else budget_bytes(cores)
    if budget <= 0:
        raise ConfigError(f"--memory-mb must be positive, got {memory_mb}")
    best: tuple[tuple[int, int], MemoryEstimate] | None = None
    for fold in candidate_folds():
        est = MemoryEstimate(per_pixel.weights, per_pixel.activations * fold[0] * fold[1] * batch, cores)
        if est.total <= budget:
            best = (fold, est)
    if best is None:
        smallest = candidate_folds()[0]
        est = MemoryEstimate(per_pixel.weights, per_pixel.activations * smallest[0] * smallest[1] * batch, cores)
        raise ConfigError(f"no fold fits {budget / MIB:.2f} MiB: even {smallest[0]}x{smallest[1]} needs "
                          f"{est.format()}; raise --memory-mb or use --cores 4")
    return best[0], best[1], budget
