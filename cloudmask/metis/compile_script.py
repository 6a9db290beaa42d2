"""Quantize and compile the exported model for Axelera Metis with the Voyager SDK's Python API.

Written next to ``model.onnx`` by ``cloudmask metis export``; run it where the Voyager SDK is installed
(its virtual environment activated)::

    python compile.py --calibration CALIB_DIR [--out compiled] [--axm] [--limit 400]

``CALIB_DIR`` is a calibration set from ``cloudmask metis calibration``: float32 NCHW batch-1 ``.npy``
patches, already normalised, listed in ``manifest.json``. Settings come from ``compiler_config.json``, in
the keyword names the installed SDK's ``CompilerConfig`` declares (1.6 and 1.8 differ). It writes
``card-metis.json`` beside itself: the exported card with ``metis_model`` pointing at the compiled
``model.json`` (low-level runtime) or, with ``--axm``, the ``.axm`` (SDK 1.8 ``axelera.runtime.op``), ready for
``cloudmask run --backend metis --model card-metis.json``.
This file only needs numpy to import; the SDK is imported when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


class CalibrationSet:
    """Re-iterable float32 ``(1, C, H, W)`` samples of a calibration directory (one file in memory at a time).

    Samples already in ``shape`` are used as they are. For a patch-stacked classifier (``regroup="stack"``,
    input ``[1, k*c, p, p]``) samples of the original card's patch (``[1, c, p, p]``: a calibration set made
    with the original card) are stacked ``k`` at a time along the channels, as the engine stacks patches.
    """

    def __init__(self, directory: Path, shape: list[int] | None = None, limit: int | None = None,
                 regroup: str | None = None) -> None:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
        self.files = [Path(directory) / item["file"] for item in manifest["items"]][:limit]
        self.shape = tuple(shape) if shape else None
        self.regroup = regroup
        if not self.files:
            raise SystemExit(f"no calibration patches listed in {directory}/manifest.json")

    def __len__(self) -> int:
        return len(list(iter(self))) if self.regroup else len(self.files)

    def _raw(self) -> Iterator[np.ndarray]:
        for f in self.files:
            x = np.load(f)
            if x.dtype != np.float32:
                raise SystemExit(f"{f}: expected float32, got {x.dtype}")
            yield x

    def __iter__(self) -> Iterator[np.ndarray]:
        want = self.shape
        pending: list[np.ndarray] = []
        for x in self._raw():
            if want is None or tuple(x.shape) == want:
                yield x
                continue
            if self.regroup == "stack" and x.ndim == 4 and want[1] % x.shape[1] == 0 and x.shape[2:] == want[2:]:
                pending.append(x)
                if len(pending) * x.shape[1] == want[1]:
                    yield np.concatenate(pending, axis=1)
                    pending = []
            else:
                raise SystemExit(f"calibration sample of shape {x.shape} does not fit the exported input {want}")


def load_config(path: Path = HERE / "compiler_config.json") -> dict[str, Any]:
    """The settings ``cloudmask metis export`` wrote."""
    config: dict[str, Any] = json.loads(Path(path).read_text())
    return config


def declared_fields(config_cls: Any) -> set[str] | None:
    """The keyword names ``CompilerConfig`` declares (pydantic v2/v1, dataclass, or signature); None if unknown."""
    import dataclasses
    import inspect

    for attr in ("model_fields", "__fields__"):
        fields = getattr(config_cls, attr, None)
        if isinstance(fields, dict) and fields:
            return set(fields)
    if dataclasses.is_dataclass(config_cls):
        return {f.name for f in dataclasses.fields(config_cls)}
    try:
        params = inspect.signature(config_cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def compiler_settings(config: dict[str, Any], fields: set[str] | None) -> tuple[str, dict[str, Any]]:
    """``(which, settings)``: the multicore settings in the names the installed ``CompilerConfig`` declares.

    ``compiler`` holds the SDK 1.6 names (``aipu_cores_used``, ``resources_used``, ``multicore_mode``:
    voyager-sdk docs/reference/compiler/compiler-config-ref.md; ultralytics utils/export/axelera.py with
    axelera-devkit 1.7), ``compiler_sdk18`` those of the 1.8 docs' Python example (``aipu_cores``,
    ``resources``: docs/reference/compiler/compiler-configs.md). Unknown fields: the 1.6 names.
    """
    sets = [(k, dict(config.get(k) or {})) for k in ("compiler", "compiler_sdk18") if config.get(k)]
    if fields is None:
        return sets[0]
    for key, settings in sets:
        if all(name in fields for name in settings):
            return key, settings
    key, settings = max(sets, key=lambda kv: sum(n in fields for n in kv[1]))
    dropped = [n for n in settings if n not in fields]
    print(f"warning: this SDK's CompilerConfig has no {dropped}; compiling without them", file=sys.stderr)
    return key, {n: v for n, v in settings.items() if n in fields}


def write_card(config: dict[str, Any], compiled: Path, where: Path = HERE) -> Path | None:
    """``card-metis.json`` beside this script: the exported card with ``metis_model`` (relative to the card)."""
    card = config.get("card")
    if not card:
        return None
    card = dict(card)
    try:
        card["metis_model"] = str(compiled.resolve().relative_to(where.resolve()))
    except ValueError:
        card["metis_model"] = str(compiled.resolve())
    path = where / "card-metis.json"
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path


def find_compiled(out: Path, axm: bool) -> Path | None:
    """The compiled model under ``out``: ``*.axm`` (SDK 1.8 op API) or ``model.json`` (low-level API)."""
    found = sorted(out.rglob("*.axm" if axm else "model.json"))
    return found[0] if found else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--calibration", type=Path, required=True, help="calibration set directory")
    parser.add_argument("--out", type=Path, default=Path("compiled"),
                        help="compiler output directory, relative to this script's directory")
    parser.add_argument("--model", type=Path, default=HERE / "model.onnx")
    parser.add_argument("--axm", action="store_true",
                        help="write a single-file .axm archive (run by SDK 1.8's axelera.runtime.op)")
    parser.add_argument("--limit", type=int, default=400, help="use at most this many calibration patches")
    args = parser.parse_args(argv)
    config = load_config()
    card = config.get("card") or {}
    regroup = "stack" if card.get("patches_per_call") else None
    data = CalibrationSet(args.calibration.resolve(), config.get("input_shape"), args.limit, regroup)
    if len(data) < 100:
        print(f"warning: {len(data)} calibration patches; the SDK docs suggest 100-400", file=sys.stderr)
    try:
        from axelera import compiler
        from axelera.compiler import CompilerConfig
    except ImportError:
        print(
            "the Axelera Voyager SDK is not importable here: install it (github.com/axelera-ai-hub/voyager-sdk; "
            "SDK 1.8: pip install axelera-devkit from Axelera's index) and activate its environment, then run "
            "this script again",
            file=sys.stderr,
        )
        return 2
    which, settings = compiler_settings(config, declared_fields(CompilerConfig))
    if args.axm:
        settings.update(output_axm_format=True, model_name=config.get("model_name", "model"))
    cfg = CompilerConfig(**settings)
    # docs/reference/compiler/compiler-api.md: quantize(model=, calibration_dataset=, config=), then
    # compile(model=, config=, output_dir=); calibration samples are float32 NCHW batch 1, already normalised
    quantized = compiler.quantize(model=str(args.model.resolve()), calibration_dataset=data, config=cfg)
    # ultralytics utils/export/axelera.py: "The Axelera compiler emits invalid artifacts for absolute output
    # paths", so compile into a relative directory, from this script's directory
    out = args.out if not args.out.is_absolute() else Path(os.path.relpath(args.out, HERE))
    cwd = Path.cwd()
    os.chdir(HERE)
    try:
        compiler.compile(model=quantized, config=cfg, output_dir=out)
        compiled = find_compiled(out, args.axm) or (find_compiled(Path("."), True) if args.axm else None)
    finally:
        os.chdir(cwd)
    print(f"compiled {args.model} -> {HERE / out} (cores {config['cores']}: {which} {settings})")
    if compiled is None:
        print(f"warning: no compiled model found under {HERE / out}; set metis_model in the card by hand",
              file=sys.stderr)
        return 0
    card = write_card(config, HERE / compiled)
    if card is not None:
        print(f"card for `cloudmask run --backend metis --model {card}`: metis_model {HERE / compiled}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
