"""An **emulation** of Axelera's ``axelera.runtime`` for tests, docs and notebooks: no Metis, no Voyager SDK.

Used only when asked (:func:`installed`); nothing in cloudmask imports it otherwise. It follows the SDK's
documented interfaces, nothing more:

- :mod:`.runtime` — the low-level API (``Context``, ``device_connect``, ``load_model``,
  ``load_model_instance``, ``TensorInfo``), after voyager-sdk ``docs/reference/apis/axruntime-py.md``
  (and ``docs/reference/axelera.runtime.md`` of v1.2.5): int8 NHWC padded tensors, one Connection per
  instance reserving ``num_sub_devices`` of the device's 4 cores, ``double_buffer`` returning the result
  of two calls back, ``preamble_graph``/``postamble_graph`` properties, every object released with its
  Context.
- :mod:`.compiler` — ``axelera.compiler`` (``quantize``, ``compile``, ``CompilerConfig``), after
  ``docs/reference/compiler/compiler-api.md``, writing the emulation's compiled models.
- :mod:`.op` — SDK 1.8's ``axelera.runtime.op`` (``op.load(<model>.axm).optimized()``, per-sample calls,
  ``.batch(x)``), after voyager-sdk ``docs/reference/pipeline-builder/api/axelera.runtime.op.inference.md``
  and its public client ultralytics ``ultralytics/nn/backends/axelera.py``.

"Compiled models" here are JSON files (``model.json``, or ``<name>.axm``) written by :func:`write_compiled`
that name the float ONNX graph the emulated device runs and the int8 scales; the real compiler's
formats are binary and are not emulated.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager

from .runtime import write_compiled

GENERATIONS = ("1.6", "1.8")
__all__ = ["GENERATIONS", "installed", "write_compiled"]


@contextmanager
def installed(generation: str = "1.8") -> Iterator[types.ModuleType]:
    """Make ``import axelera.runtime`` and ``axelera.compiler`` (and for ``"1.8"`` ``axelera.runtime.op``)
    import the emulation.

    Restores ``sys.modules`` on exit. Yields the emulated ``axelera.runtime`` module.
    """
    if generation not in GENERATIONS:
        raise ValueError(f"generation must be one of {GENERATIONS}, got {generation!r}")
    from . import compiler as fake_compiler
    from . import op as fake_op
    from . import runtime as fake_runtime

    names = ("axelera", "axelera.runtime", "axelera.runtime.op", "axelera.compiler")
    saved = {n: sys.modules.get(n) for n in names}
    rt = types.ModuleType("axelera.runtime")
    rt.__dict__.update({k: v for k, v in vars(fake_runtime).items()
                        if not k.startswith("__") and k not in ("write_compiled", "reset", "DEVICES")})
    rt.__version__ = {"1.6": "1.6.0", "1.8": "1.8.0"}[generation]  # type: ignore[attr-defined]
    rt.__doc__ = fake_runtime.__doc__
    comp = types.ModuleType("axelera.compiler")
    comp.__dict__.update({k: v for k, v in vars(fake_compiler).items() if not k.startswith("__")})
    comp.CompilerConfig = fake_compiler.CompilerConfig18 if generation == "1.8" else fake_compiler.CompilerConfig16  # type: ignore[attr-defined]
    pkg = types.ModuleType("axelera")
    pkg.runtime = rt  # type: ignore[attr-defined]
    pkg.compiler = comp  # type: ignore[attr-defined]
    sys.modules["axelera"] = pkg
    sys.modules["axelera.runtime"] = rt
    sys.modules["axelera.compiler"] = comp
    if generation == "1.8":
        rt.op = fake_op  # type: ignore[attr-defined]
        sys.modules["axelera.runtime.op"] = fake_op
    else:
        sys.modules["axelera.runtime.op"] = None  # type: ignore[assignment]  # `from axelera.runtime import op` fails
    try:
        yield rt
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod
