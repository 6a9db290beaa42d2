"""Emulated ``axelera.compiler`` (``quantize`` + ``compile`` + ``CompilerConfig``), after voyager-sdk
``docs/reference/compiler/compiler-api.md``; for the docs' walk and the notebook only.

``quantize`` takes per-tensor int8 scales from the calibration samples (input and output absolute maxima,
zero point 0); ``compile`` writes the emulation's compiled model (``compiled_model/model.json``, or
``<model_name>.axm`` with ``output_axm_format``) whose device runs the float graph on int8-rounded tensors.
``CompilerConfig`` declares the SDK 1.6 keyword names (``aipu_cores_used``, ``resources_used``) or, for
generation 1.8, those of the 1.8 docs' Python example (``aipu_cores``, ``resources``), so a script must pick
the names the installed SDK declares, as ``compile.py`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import write_compiled


@dataclasses.dataclass
class CompilerConfig16:
    aipu_cores_used: int = 1
    resources_used: float = 1.0
    multicore_mode: str = "multiprocess"
    output_axm_format: bool = False
    model_name: str = ""

    @property
    def cores(self) -> int:
        return self.aipu_cores_used


@dataclasses.dataclass
class CompilerConfig18:
    aipu_cores: int = 1
    resources: float = 1.0
    multicore_mode: str = "multiprocess"
    output_axm_format: bool = False
    model_name: str = ""

    @property
    def cores(self) -> int:
        return self.aipu_cores


#: Replaced by :func:`cloudmask.metis.fake_sdk.installed` with the generation's class.
CompilerConfig: Any = CompilerConfig16


@dataclasses.dataclass
class QuantizedModel:
    onnx: str
    input_shape: tuple[int, int, int, int]
    classes: int
    in_scale: float
    out_scale: float
    out_shape: tuple[int, ...]
    samples: int


def quantize(model: str, calibration_dataset: Iterable[Any], config: Any,
             transform_fn: Callable[[Any], np.ndarray] | None = None) -> QuantizedModel:
    """Per-tensor int8 scales from the calibration samples (float32 NCHW batch 1)."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    in_max = out_max = 1e-6
    n = 0
    shape: tuple[int, ...] = ()
    out: np.ndarray | None = None
    for item in calibration_dataset:
        x = np.asarray(transform_fn(item) if transform_fn else item, np.float32)
        out = sess.run(None, {name: x})[0]
        in_max, out_max = max(in_max, float(np.abs(x).max())), max(out_max, float(np.abs(out).max()))
        shape, n = x.shape, n + 1
    if n == 0 or out is None:
        raise ValueError("calibration_dataset is empty")
    return QuantizedModel(str(Path(model).resolve()), tuple(int(v) for v in shape), int(out.shape[1]),  # type: ignore[arg-type]
                          in_max / 127, out_max / 127, tuple(int(v) for v in out.shape), n)


def compile(model: QuantizedModel, config: Any, output_dir: Path | str) -> None:  # noqa: A001 - the SDK's name
    """Write the emulated compiled model under ``output_dir``."""
    out = Path(output_dir)
    cores = int(config.cores)
    batch = cores if config.multicore_mode == "batch" else 1
    target = out / f"{config.model_name or 'model'}.axm" if config.output_axm_format else out / "compiled_model" / "model.json"
    o = model.out_shape  # NCHW (or [N, K]) of the float graph -> the device's NHWC
    out_shape = (batch, 1, 1, o[1]) if len(o) == 2 else (batch, o[2], o[3], o[1])
    write_compiled(target, onnx=model.onnx, input_shape=model.input_shape, classes=model.classes, batch=batch,
                   cores=cores, in_scale=model.in_scale, out_scale=model.out_scale, out_shape=out_shape,
                   flat_output=len(o) == 2)
