"""Normalisations as data: how a model card turns reflectance (0–1) into model input.

A card's ``normalisation`` is one step or a chain of steps, applied in order to ``(C, ...)``
float32 reflectance in model band order. Every parameter is a scalar (all bands) or one value per
band. The types::

    standardize  {mean, std}            (x - mean) / std
    scale        {multiply, add}        x * multiply + add        (either may be left out)
    minmax       {low, high}            clip((x - low) / (high - low), 0, 1)
    log1p        {}                     log(1 + x)
    clip         {low, high}            clip(x, low, high)        (either may be left out)
    chain        {steps: [...]}         each step in order (a YAML list of steps means the same)

A card file without ``type`` but with ``mean`` and ``std`` is a ``standardize`` (the original card
form). An unknown type is a :class:`~cloudmask.errors.ModelCardError` naming the allowed ones.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import ModelCardError

#: Normalisation types a card may name.
TYPES: tuple[str, ...] = ("standardize", "scale", "minmax", "log1p", "clip", "chain")
_ALIASES = {"standardise": "standardize", "zscore": "standardize", "z-score": "standardize",
            "min-max": "minmax", "min_max": "minmax"}

Values = tuple[float, ...]


def _values(raw: Any, name: str, where: str, default: float | None = None) -> Values | None:
    """A scalar or a list of numbers as a tuple; ``None`` when absent (and no default)."""
    if raw is None:
        return None if default is None else (float(default),)
    values: Values | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        values = (float(raw),)
    elif isinstance(raw, Sequence) and not isinstance(raw, str) and raw:
        with contextlib.suppress(TypeError, ValueError):
            values = tuple(float(v) for v in raw)
    if values is not None and all(math.isfinite(v) for v in values):
        return values
    raise ModelCardError(f"{where}: '{name}' must be a number or a list of numbers (one per band), each finite "
                         f"(not NaN or infinity), got {raw!r}")


def _per_band(values: Values, ndim: int) -> np.ndarray:
    """Values shaped to broadcast over ``(C, ...)`` (a scalar stays a scalar)."""
    arr = np.asarray(values, np.float32)
    return arr.reshape((-1,) + (1,) * (ndim - 1)) if arr.size > 1 else arr.reshape(())


def _check_len(values: Values | None, name: str, n_bands: int, where: str) -> None:
    if values is not None and len(values) not in (1, n_bands):
        raise ModelCardError(
            f"{where}: '{name}' needs one value or one per band ({n_bands}), got {len(values)}"
        )


def _plain(values: Values) -> float | list[float]:
    return values[0] if len(values) == 1 else list(values)


class Step:
    """One normalisation step."""

    type: ClassVar[str] = ""

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Apply in place to float32 ``(C, ...)`` and return it."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def validate(self, n_bands: int, where: str) -> None:
        """Raise :class:`ModelCardError` if the parameters do not fit ``n_bands`` bands."""


@dataclass(frozen=True)
class Standardize(Step):
    """``(x - mean) / std``."""

    mean: Values
    std: Values
    type: ClassVar[str] = "standardize"

    def apply(self, x: np.ndarray) -> np.ndarray:
        x -= _per_band(self.mean, x.ndim)
        x /= _per_band(self.std, x.ndim)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "mean": _plain(self.mean), "std": _plain(self.std)}

    def validate(self, n_bands: int, where: str) -> None:
        _check_len(self.mean, "mean", n_bands, where)
        _check_len(self.std, "std", n_bands, where)
        if any(s <= 0 for s in self.std):
            raise ModelCardError(f"{where}: standardize 'std' values must be > 0")


@dataclass(frozen=True)
class Scale(Step):
    """``x * multiply + add``."""

    multiply: Values = (1.0,)
    add: Values = (0.0,)
    type: ClassVar[str] = "scale"

    def apply(self, x: np.ndarray) -> np.ndarray:
        x *= _per_band(self.multiply, x.ndim)
        x += _per_band(self.add, x.ndim)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "multiply": _plain(self.multiply), "add": _plain(self.add)}

    def validate(self, n_bands: int, where: str) -> None:
        _check_len(self.multiply, "multiply", n_bands, where)
        _check_len(self.add, "add", n_bands, where)


@dataclass(frozen=True)
class MinMax(Step):
    """``clip((x - low) / (high - low), 0, 1)``."""

    low: Values
    high: Values
    type: ClassVar[str] = "minmax"

    def apply(self, x: np.ndarray) -> np.ndarray:
        low = _per_band(self.low, x.ndim)
        x -= low
        x /= _per_band(self.high, x.ndim) - low
        np.clip(x, 0.0, 1.0, out=x)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "low": _plain(self.low), "high": _plain(self.high)}

    def validate(self, n_bands: int, where: str) -> None:
        _check_len(self.low, "low", n_bands, where)
        _check_len(self.high, "high", n_bands, where)
        lo, hi = np.broadcast_arrays(np.asarray(self.low), np.asarray(self.high))
        if np.any(hi <= lo):
            raise ModelCardError(f"{where}: minmax needs 'high' > 'low' for every band")


@dataclass(frozen=True)
class Log1p(Step):
    """``log(1 + x)``."""

    type: ClassVar[str] = "log1p"

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.log1p(x, out=x)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type}


@dataclass(frozen=True)
class Clip(Step):
    """``clip(x, low, high)``; a missing bound is open."""

    low: Values | None = None
    high: Values | None = None
    type: ClassVar[str] = "clip"

    def apply(self, x: np.ndarray) -> np.ndarray:
        lo = None if self.low is None else _per_band(self.low, x.ndim)
        hi = None if self.high is None else _per_band(self.high, x.ndim)
        if lo is not None:
            np.maximum(x, lo, out=x)
        if hi is not None:
            np.minimum(x, hi, out=x)
        return x

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        if self.low is not None:
            d["low"] = _plain(self.low)
        if self.high is not None:
            d["high"] = _plain(self.high)
        return d

    def validate(self, n_bands: int, where: str) -> None:
        if self.low is None and self.high is None:
            raise ModelCardError(f"{where}: clip needs 'low' and/or 'high'")
        _check_len(self.low, "low", n_bands, where)
        _check_len(self.high, "high", n_bands, where)


@dataclass(frozen=True)
class Normalisation:
    """A chain of steps (one step is a chain of one; no steps is the identity)."""

    steps: tuple[Step, ...]

    def apply(self, reflectance: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy of ``(C, ...)`` reflectance (written into ``out`` when given)."""
        if out is None:
            out = np.array(reflectance, dtype=np.float32, copy=True)
        elif out is not reflectance:
            np.copyto(out, reflectance, casting="same_kind")
        for step in self.steps:
            out = step.apply(out)
        return out

    __call__ = apply

    def validate(self, n_bands: int, where: str = "model card") -> None:
        for step in self.steps:
            step.validate(n_bands, where)

    def to_dict(self) -> dict[str, Any]:
        """The card-file form: one step's mapping, or ``{type: chain, steps: [...]}``."""
        if len(self.steps) == 1:
            return self.steps[0].to_dict()
        return {"type": "chain", "steps": [s.to_dict() for s in self.steps]}

    def affine(self, n_bands: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-band ``(multiply, add)`` (float64, ``n_bands`` each) with ``apply(x) == x * multiply + add``
        when every step is affine (``standardize``, ``scale``; no steps is the identity), else None.

        A reader can then normalise in the pass that turns DN into reflectance."""
        mul, add = np.ones(n_bands), np.zeros(n_bands)
        for step in self.steps:
            if isinstance(step, Standardize):
                std = np.asarray(step.std, np.float64)
                m, a = 1.0 / std, -np.asarray(step.mean, np.float64) / std
            elif isinstance(step, Scale):
                m, a = np.asarray(step.multiply, np.float64), np.asarray(step.add, np.float64)
            else:
                return None
            mul, add = mul * m, add * m + a
        return np.broadcast_to(mul, (n_bands,)).copy(), np.broadcast_to(add, (n_bands,)).copy()

    @property
    def standardize(self) -> Standardize | None:
        """The step when this is exactly one ``standardize`` (what ``card.mean``/``card.std`` mirror)."""
        if len(self.steps) == 1 and isinstance(self.steps[0], Standardize):
            return self.steps[0]
        return None

    def describe(self) -> str:
        return " -> ".join(s.type for s in self.steps) or "identity"


def standardize(mean: Sequence[float], std: Sequence[float]) -> Normalisation:
    """The classic per-band ``(x - mean) / std``."""
    return Normalisation((Standardize(tuple(map(float, mean)), tuple(map(float, std))),))


def _step(raw: Any, where: str) -> list[Step]:
    if not isinstance(raw, Mapping):
        raise ModelCardError(f"{where}: a normalisation step must be a mapping with a 'type' (one of {', '.join(TYPES)})")
    kind = raw.get("type")
    if kind is None and "mean" in raw and "std" in raw:
        kind = "standardize"
    kind = _ALIASES.get(str(kind).lower(), str(kind).lower()) if kind is not None else None
    if kind not in TYPES:
        raise ModelCardError(
            f"{where}: unknown normalisation type {raw.get('type')!r}; use one of {', '.join(TYPES)} "
            "(see cloudmask.normalisation)"
        )
    known = {"standardize": {"mean", "std"}, "scale": {"multiply", "add", "scale", "offset"},
             "minmax": {"low", "high", "min", "max"}, "log1p": set(), "clip": {"low", "high", "min", "max"},
             "chain": {"steps"}}[kind] | {"type"}
    extra = sorted(set(raw) - known)
    if extra:
        raise ModelCardError(
            f"{where}: normalisation '{kind}' does not take {', '.join(extra)}; it takes "
            f"{', '.join(sorted(known - {'type'})) or 'no parameters'}"
        )
    if kind == "chain":
        steps = raw.get("steps")
        if not isinstance(steps, Sequence) or isinstance(steps, str) or not steps:
            raise ModelCardError(f"{where}: a 'chain' normalisation needs a non-empty 'steps' list")
        return [s for k, item in enumerate(steps) for s in _step(item, f"{where} step {k + 1}")]
    if kind == "standardize":
        mean = _values(raw.get("mean"), "mean", where)
        std = _values(raw.get("std"), "std", where)
        if mean is None or std is None:
            raise ModelCardError(f"{where}: standardize needs 'mean' and 'std' (reflectance units)")
        return [Standardize(mean, std)]
    if kind == "scale":
        mul = _values(raw.get("multiply", raw.get("scale")), "multiply", where, 1.0)
        add = _values(raw.get("add", raw.get("offset")), "add", where, 0.0)
        assert mul is not None and add is not None
        return [Scale(mul, add)]
    if kind == "minmax":
        low = _values(raw.get("low", raw.get("min")), "low", where)
        high = _values(raw.get("high", raw.get("max")), "high", where)
        if low is None or high is None:
            raise ModelCardError(f"{where}: minmax needs 'low' and 'high' (reflectance units)")
        return [MinMax(low, high)]
    if kind == "log1p":
        return [Log1p()]
    return [Clip(_values(raw.get("low", raw.get("min")), "low", where),
                 _values(raw.get("high", raw.get("max")), "high", where))]


def from_card(raw: Any, where: str = "model card") -> Normalisation:
    """Parse a card's ``normalisation`` field: a mapping (one step or a chain) or a list of steps."""
    w = f"{where}: normalisation"
    if isinstance(raw, Normalisation):
        return raw
    if isinstance(raw, Sequence) and not isinstance(raw, str):
        if not raw:
            raise ModelCardError(f"{w} list is empty; give at least one step")
        return Normalisation(tuple(s for k, item in enumerate(raw) for s in _step(item, f"{w} step {k + 1}")))
    return Normalisation(tuple(_step(raw, w)))


__all__ = [
    "TYPES", "Clip", "Log1p", "MinMax", "Normalisation", "Scale", "Standardize", "Step", "from_card",
    "standardize",
]
