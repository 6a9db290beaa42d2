"""Quantize and compile the exported model for Axelera Metis with the Voyager SDK's Python API.

Written next to ``model.onnx`` by ``cloudmask metis export``; run it where the Voyager SDK is installed
(its virtual environment activated)::

    python compile.py --calibration CALIB_DIR [--out compiled] [--axm] [--limit 400]

``CALIB_DIR`` is a calibration set from ``cloudmask metis calibration``: float32 NCHW batch-1 ``.npy``
patches, already normalised, listed in ``manifest.json``. Settings come from ``compiler_config.json``.
This file only needs numpy to import; the SDK is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


class CalibrationSet:
    """Re-iterable float32 ``(1, C, H, W)`` patches of a calibration directory (one file in memory at a time)."""

    def __init__(self, directory: Path, shape: list[int] | None = None, limit: int | None = None) -> None:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        self.files = [Path(directory) / item["file"] for item in manifest["items"]][:limit]
        self.shape = tuple(shape) if shape else None
        if not self.files:
            raise SystemExit(f"no calibration patches listed in {directory}/manifest.json")

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[np.ndarray]:
        for f in self.files:
            x = np.load(f)
            if x.dtype != np.float32 or (self.shape and tuple(x.shape) != self.shape):
                raise SystemExit(f"{f}: expected float32 {self.shape}, got {x.dtype} {x.shape}")
            yield x


def load_config(path: Path = HERE / "compiler_config.json") -> dict[str, Any]:
    """The settings ``cloudmask metis export`` wrote."""
    config: dict[str, Any] = json.loads(Path(path).read_text())
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calibration", type=Path, required=True, help="calibration set directory")
    parser.add_argument("--out", type=Path, default=HERE / "compiled", help="compiler output directory")
    parser.add_argument("--model", type=Path, default=HERE / "model.onnx")
    parser.add_argument("--axm", action="store_true", help="also write a single-file .axm archive")
    parser.add_argument("--limit", type=int, default=400, help="use at most this many calibration patches")
    args = parser.parse_args(argv)
    config = load_config()
    data = CalibrationSet(args.calibration, config.get("input_shape"), args.limit)
    if len(data) < 100:
        print(f"warning: {len(data)} calibration patches; the SDK docs suggest 100-400", file=sys.stderr)
    try:
        from axelera import compiler
        from axelera.compiler import CompilerConfig
    except ImportError:
        print(
            "the Axelera Voyager SDK is not importable here: install it (github.com/axelera-ai-hub/voyager-sdk) "
            "and activate its environment, then run this script again",
            file=sys.stderr,
        )
        return 2
    settings = dict(config["compiler"])
    if args.axm:
        settings.update(output_axm_format=True, model_name=config.get("model_name", "model"))
    cfg = CompilerConfig(**settings)
    quantized = compiler.quantize(str(args.model), data, cfg)
    compiler.compile(quantized, cfg, str(args.out))
    print(f"compiled {args.model} -> {args.out} ({config['cores']}: {settings})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
