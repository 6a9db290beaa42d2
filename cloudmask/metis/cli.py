"""``cloudmask metis ...``: export, check, calibration and INT8 preview on the command line.

Registered by ``cloudmask.cli``; the group maps :class:`CloudmaskError` to ``error: ...`` and its exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..console import CloudmaskGroup
from ..stac.query import DATETIME_HELP as _DATETIME_HELP


@click.group("metis", cls=CloudmaskGroup)
def metis() -> None:
    """Prepare models for the Axelera Metis accelerator (batch 1)."""


@metis.command("export")
@click.option("--model", "model", required=True, help="built-in model name or model card / ONNX path")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the graph, its card, the compiler config and compile.py (created if missing).")
@click.option("--cores", type=click.Choice(["1", "4", "single", "batch4"]), default="1", show_default=True,
              help="1: one-core instances, replicated 4x; 4: one batch-1 instance over all 4 cores (a model that "
                   "fits only once); batch4: one instance over 4 cores with runtime batch 4")
@click.option("--fold", "fold", default=None, metavar="HxW|auto",
              help="pixel models: pixels per call as an H x W grid (default 256x256 = 65,536); auto: the largest "
                   "that fits --memory-mb")
@click.option("--memory-mb", "memory_mb", type=click.FloatRange(min=0, min_open=True), default=None,
              help="with --fold auto: MiB one instance may use (default: the on-chip L1 + L2 share of --cores, "
                   "see docs/metis.md)")
@click.option("--patches-per-call", "patches_per_call", type=int, default=1, show_default=True,
              help="segmentation models: compile at a k x k patch input (4 = 2 x 2, 9 = 3 x 3); patch "
                   "classifiers: k patches stacked in one [1, k*C, p, p] call, scores [1, k*K, 1, 1]")
def export_cmd(model: str, out: Path, cores: str, fold: str | None, memory_mb: float | None,
               patches_per_call: int) -> None:
    """Write a static batch-1 float32 ONNX, its card, compiler config and compile.py to OUT.

    Every graph is converted to opset <= 17 and its in-graph pre-processing (per-channel Sub/Div/Mul/Add,
    BatchNormalization before the first layer) is folded into that layer. Pixel models ([N, C] -> [N, K])
    are batch-folded: every Gemm / MatMul+Add becomes a 1x1 Conv over [1, C, H, W], so one call
    classifies H x W pixels. Patch classifiers with --patches-per-call k take k patches per call.
    """
    from ..errors import ConfigError
    from .check import check
    from .export import AIPU_CORES, RUNTIME_LAYOUT, export

    if memory_mb is not None and fold != "auto":
        raise ConfigError("--memory-mb goes with --fold auto")
    mode = {"1": "single"}.get(cores, cores)
    parsed = _parse_fold(fold) if fold and fold != "auto" else None
    if fold == "auto":
        from .memory import auto_fold

        parsed, est, budget = auto_fold(model, cores=AIPU_CORES[mode], memory_mb=memory_mb,
                                        batch=RUNTIME_LAYOUT[mode]["batch_per_call"])
        click.echo(f"--fold auto: {parsed[0]}x{parsed[1]} fits {budget / 2**20:.2f} MiB ({est.format()})")
    result = export(model, out, mode, fold=parsed, patches_per_call=patches_per_call)
    click.echo(f"exported {result.card.name} -> {result.onnx_path} (input {list(result.input_shape)})")
    click.echo(f"card {result.card_path}; compiler config {result.config_path}; script {result.compile_script}")
    if fold != "auto":
        import onnx

        from .memory import budget_bytes, estimate

        est = estimate(onnx.load(str(result.onnx_path)), batch=RUNTIME_LAYOUT[mode]["batch_per_call"],
                       cores=AIPU_CORES[mode])
        click.echo(f"memory estimate: {est.format()}; on-chip budget of {AIPU_CORES[mode]} core(s) "
                   f"{budget_bytes(AIPU_CORES[mode]) / 2**20:.2f} MiB (docs/metis.md)")
    report = check(result.onnx_path)
    click.echo(report.format())
    if not report.compilable:
        sys.exit(1)


@metis.command("info")
def info_cmd() -> None:
    """Print the Voyager SDK runtime version, the API `run --backend metis` uses, and the Metis devices found."""
    from ..runtime.metis import sdk_info

    click.echo(sdk_info().format())


@metis.command("check")
@click.argument("onnx_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def check_cmd(onnx_path: Path, as_json: bool) -> None:
    """Check every node against the Metis rules; exit 1 when the graph would not compile.

    Not compilable: a non-accelerated node in the middle of the graph, or a model-level rule
    (opset, batch 1, static input) fails. Host ops at the head or tail are reported but pass.
    """
    from .check import check

    report = check(onnx_path)
    click.echo(json.dumps(report.to_dict(), indent=1) if as_json else report.format())
    if not report.compilable:
        sys.exit(1)


@metis.command("calibration")
@click.option("--stac", required=True, help="STAC API URL, static catalogue, or earth-search|planetary-computer|cdse")
@click.option("--model", "model", required=True, help="built-in model name or model card")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the patches (.npy) and manifest.json (created if missing).")
@click.option("--samples", type=int, default=200, show_default=True,
              help="Patches in the set, stratified by cloud, shadow, clear and scene.")
@click.option("--collection", default=None, help="Collection id (default: the endpoint's Sentinel-2 collection).")
@click.option("--bbox", default=None, help="west,south,east,north in degrees")
@click.option("--datetime", "datetime_", default=None, help=_DATETIME_HELP)
@click.option("--max-cloud", type=float, default=None, help="Maximum eo:cloud_cover of a scene, percent.")
@click.option("--limit", type=int, default=None, help="at most this many scenes")
@click.option("--stride", type=int, default=None, help="pixels between candidate windows (default half a patch)")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the sampling (same seed, same set).")
def calibration_cmd(stac: str, model: str, out: Path, samples: int, collection: str | None, bbox: str | None,
                    datetime_: str | None, max_cloud: float | None, limit: int | None, stride: int | None,
                    seed: int) -> None:
    """Build a stratified calibration set (float32 NCHW batch-1 .npy + manifest) from STAC scenes."""
    from .calibration import calibration_set_from_stac

    manifest = calibration_set_from_stac(
        stac, out, model, samples=samples, collection=collection, bbox=bbox,
        datetime=datetime_, max_cloud=max_cloud, limit=limit, stride=stride, seed=seed,
    )
    doc = json.loads(manifest.read_text())
    click.echo(f"calibration set: {manifest} ({len(doc.get('items', []))} patches)")
    for key in ("scenes", "strata"):
        if key in doc:
            click.echo(f"{key}: {json.dumps(doc[key])}")


@metis.command("int8-preview")
@click.option("--model", "model", required=True, help="built-in name or model card (exported or not)")
@click.option("--calibration", "calibration", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration set made by `cloudmask metis calibration`.")
@click.option("--held-out", "held_out", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="patch set with optional labels (default: the calibration set, not independent)")
@click.option("--per-channel", is_flag=True, help="per-channel weight scales (default per-tensor)")
@click.option("--method", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="How activation ranges are calibrated (ONNX Runtime's calibrate methods).")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path),
              help="where the int8 model and card go (default CALIBRATION/int8)")
def int8_cmd(model: str, calibration: Path, held_out: Path | None, per_channel: bool, method: str,
             out: Path | None) -> None:
    """Quantize to INT8 on the CPU (ONNX Runtime) and compare with fp32."""
    from .int8 import int8_preview

    report = int8_preview(model, calibration, held_out=held_out, per_channel=per_channel, out_dir=out,
                          calibrate_method=method)
    click.echo(report.format())


def _parse_fold(text: str) -> tuple[int, int]:
    """``"256x256"`` -> ``(256, 256)``."""
    from ..errors import ConfigError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise ConfigError(f"--fold must be HxW in pixels, e.g. 256x256; got {text!r}") from err
    if h < 1 or w < 1:
        raise ConfigError(f"--fold sizes must be positive, got {text!r}")
    return h, w
