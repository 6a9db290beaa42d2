"""Export a model to a static, batch-1, float32 ONNX graph the Metis compiler can take.

Output directory layout::

    model.onnx            static [1, C, H, W], opset <= 17, constants folded, float32, Pads in Convs
    card.yaml             the model card (normalisation and softmax/argmax run on the host)
    compiler_config.json  Voyager CompilerConfig settings for the chosen multicore mode
    compile.py            quantize + compile with the Voyager SDK's Python API (run where it is installed)

Pixel models (``kind: pixel``, ``[N, C] -> [N, K]``) are exported **batch-folded**: every ``Gemm`` and
``MatMul`` (+ ``Add``) becomes a 1x1 ``Conv`` over ``[1, C, H, W]`` (default 256 x 256 = 65,536 pixels per
call), so one batch-1 call classifies ``H * W`` pixels with the same weights. The exported card keeps
``kind: pixel`` and adds ``fold: [H, W]`` and ``folded_from``; the engine packs valid pixels into
``[1, C, H, W]`` blocks (pixel ``i`` at row ``i // W``, column ``i % W``).

Patch classifiers (``kind: patch-classifier``, ``[B, C, p, p] -> [B, K]``) exported with
``patches_per_call`` = k are **patch-stacked** (:func:`cloudmask.metis.fold.stack_patch_classifier`):
one batch-1 call takes ``[1, k*C, p, p]`` (patch ``i`` in channels ``i*C .. (i+1)*C - 1``, the memory
layout of a ``[k, C, p, p]`` batch) and returns ``[1, k*K, 1, 1]``; the card says ``patches_per_call: k``.

Segmentation models can be exported for ``patches_per_call`` = 4 (or 9) patches per call (spatial
batching): the graph is compiled at a 2 x 2 (3 x 3) patch input and the card's ``patch_size`` grows
accordingly, so the engine cuts patches of that size.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, ModelError
from ..models import ModelCard, load_model
from . import fold as F
from . import graph as G

if TYPE_CHECKING:  # onnx is imported where used: importing it takes about a second
    import onnx

log = logging.getLogger(__name__)

#: ``single`` (= ``--cores 1``): one-core replicas; ``4``: one batch-1 instance over all four cores (the model must
#: fit only once); ``batch4``: one instance over four cores whose runtime batch is 4.
CORES: tuple[str, ...] = ("single", "4", "batch4")
MAX_OPSET = 17
#: Default fold of a pixel model: 256 x 256 = 65,536 pixels per call.
DEFAULT_FOLD = (256, 256)

#: Voyager ``CompilerConfig`` settings per multicore mode, SDK 1.6 names (METIS.md, "Multi-core"; voyager-sdk
#: docs/reference/compiler/compiler-config-ref.md: ``aipu_cores_used``, ``resources_used``, ``multicore_mode``
#: whose ``cooperative`` value is "cores cooperate on a single inference"; ultralytics utils/export/axelera.py
#: passes these names to axelera-devkit 1.7).
COMPILER_SETTINGS: dict[str, dict[str, Any]] = {
    "single": {"aipu_cores_used": 1, "resources_used": 0.25},
    "4": {"aipu_cores_used": 4, "resources_used": 1.0, "multicore_mode": "cooperative"},
    "batch4": {"aipu_cores_used": 4, "resources_used": 1.0, "multicore_mode": "batch"},
}
#: The same in the names of the SDK 1.8 docs' Python example (docs/reference/compiler/compiler-configs.md,
#: "Python API: CompilerConfig": ``aipu_cores``, ``resources``); compile.py uses whichever set the installed
#: ``CompilerConfig`` declares.
COMPILER_SETTINGS_18: dict[str, dict[str, Any]] = {
    "single": {"aipu_cores": 1, "resources": 0.25},
    "4": {"aipu_cores": 4, "resources": 1.0, "multicore_mode": "cooperative"},
    "batch4": {"aipu_cores": 4, "resources": 1.0, "multicore_mode": "batch"},
}
#: AIPU cores one instance uses (the runtime's ``num_sub_devices`` / ``aipu_cores``).
AIPU_CORES: dict[str, int] = {"single": 1, "4": 4, "batch4": 4}
#: How the runtime uses each mode: independent 1-core instances, or one instance whose input batch is 4.
RUNTIME_LAYOUT: dict[str, dict[str, int]] = {
    "single": {"instances": 4, "batch_per_call": 1},
    "4": {"instances": 1, "batch_per_call": 1},
    "batch4": {"instances": 1, "batch_per_call": 4},
}


@dataclass(frozen=True)
class ExportResult:
    """Paths written by :func:`export` and what the graph passes changed."""

    out_dir: Path
    onnx_path: Path
    card_path: Path
    config_path: Path
    compile_script: Path
    card: ModelCard
    input_shape: tuple[int, int, int, int]
    passes: dict[str, int] = field(default_factory=dict)


def _simplify(model: onnx.ModelProto, name: str, shape: list[int], required: bool = True) -> onnx.ModelProto:
    """Constant folding with onnxsim at a static input shape (without onnxsim: an error, or the model as
    it is when not ``required``)."""
    try:
        import onnxsim
    except ImportError as err:
        if not required:
            log.info("onnxsim is not installed: exporting without constant folding")
            return model
        raise ModelError(
            "exporting for Metis needs onnxsim to fold constants: pip install onnxsim "
            "(or pip install 's2-cloudmask[metis]')"
        ) from err
    try:
        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={name: shape})
    except Exception as err:  # onnxsim raises RuntimeError/ValueError/onnx errors
        raise ModelError(f"onnxsim could not simplify the graph: {err}") from err
    if not ok:
        raise ModelError("onnxsim's check of the simplified graph failed; the export would change results")
    return simplified


def static_model(
    card: ModelCard, patch_size: int | None = None, *, resize: bool = False
) -> tuple[onnx.ModelProto, dict[str, int], bool]:
    """The card's graph as a static batch-1 float32 graph; returns (model, pass counts, softmax removed).

    ``resize`` re-plans a graph whose spatial input is fixed at another size for ``patch_size`` (spatial
    batching of a fully convolutional model; the shapes are inferred again and the export fails when
    a node pins the old size).
    """
    model = load_converted(card)
    try:
        inp = G.image_input(model)
    except ValueError as err:
        raise ModelError(f"{card.onnx_path}: {err}") from err
    d = G.dims(inp)
    if len(d) != 4:
        raise ModelError(f"{card.onnx_path}: input must be 4-D NCHW, got {d}")
    channels = d[1] if isinstance(d[1], int) and d[1] > 0 else card.n_bands
    if channels != card.n_bands:
        raise ModelError(f"{card.onnx_path}: input has {channels} channels, the card lists {card.n_bands} bands")
    size = patch_size or card.patch_size
    hw = [v if isinstance(v, int) and v > 0 else size for v in d[2:]]
    if patch_size and resize:
        hw = [patch_size, patch_size]
    if patch_size and hw != [patch_size, patch_size]:
        raise ConfigError(f"{card.onnx_path}: graph input is fixed at {hw}, cannot export for {patch_size}")
    if hw[0] != hw[1]:
        raise ModelError(f"{card.onnx_path}: only square patches are supported, graph input is {hw}")
    shape = [1, channels, hw[0], hw[1]]
    passes = {"float16_to_float32": G.float16_to_float32(model)}
    G.set_dims(inp, shape)
    for out in model.graph.output:
        G.set_dims(out, [None] * len(G.dims(out)))
    argmax = _strip_argmax(model, card)
    softmax = G.strip_trailing_softmax(model) or argmax
    model = _simplify(model, inp.name, shape)
    passes["constants_to_initializers"] = G.constants_to_initializers(model)
    passes["identity_casts_removed"] = G.remove_identity_casts(model)
    passes["pads_folded_into_convs"] = G.fold_pads_into_convs(model)
    passes.update(F.fold_input_affine(model))
    passes["divisions_to_multiplications"] = F.divisions_to_multiplications(model)
    passes["unused_initializers_removed"] = G.remove_unused_initializers(model)
    model = _checked(model, f"exported graph of '{card.name}'")
    for out in model.graph.output:
        if not all(isinstance(v, int) and v > 0 for v in G.dims(out)):
            raise ModelError(f"output {out.name} of '{card.name}' is not static after export: {G.dims(out)}")
    return model, passes, softmax


def _strip_argmax(model: onnx.ModelProto, card: ModelCard) -> bool:
    """Drop a final ArgMax (the host takes it); True when the graph now ends in scores."""
    try:
        stripped = F.strip_trailing_argmax(model)
    except ValueError as err:
        raise ModelError(f"{card.onnx_path}: {err}") from err
    if stripped:
        log.info("removed the graph's final ArgMax: the host takes the argmax of the scores")
        G.strip_trailing_softmax(model)
    return stripped


def load_converted(card: ModelCard) -> onnx.ModelProto:
    """The card's graph, converted to opset :data:`MAX_OPSET` when it is newer (``onnx.version_converter``).

    Raises :class:`ModelError` naming the operator that stops the conversion.
    """
    import onnx

    try:
        model = onnx.load(str(card.onnx_path))
    except Exception as err:
        raise ModelError(f"cannot load ONNX model {card.onnx_path}: {err}") from err
    try:
        return F.convert_opset(model, MAX_OPSET)
    except ValueError as err:
        raise ModelError(f"{card.onnx_path} uses opset {G.opset(model)}; Metis takes <= {MAX_OPSET}: {err}") from err


def _checked(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """``model`` with its shapes inferred (strict) and checked; a failure is a :class:`ModelError` naming ``what``."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises several types
        raise ModelError(f"{what} is invalid: {err}") from err
    return model


def compiler_config(card: ModelCard, cores: str, input_shape: list[int]) -> dict[str, Any]:
    """The compiler settings file for ``cores`` (``single`` or ``batch4``)."""
    if cores not in CORES:
        raise ConfigError(f"cores must be one of {', '.join(CORES)}, got {cores!r}")
    return {
        "model_name": card.name,
        "cores": cores,
        "aipu_cores": AIPU_CORES[cores],
        "compiler": dict(COMPILER_SETTINGS[cores]),
        "compiler_sdk18": dict(COMPILER_SETTINGS_18[cores]),
        "input_shape": input_shape,
        "runtime": dict(RUNTIME_LAYOUT[cores]),
        "calibration": {"samples": [100, 400], "dtype": "float32", "layout": "NCHW", "batch": 1},
        "notes": (
            "single: 4 independent 1-core instances (model must fit 1/4 of on-chip memory). "
            "4: one batch-1 instance over all 4 cores (multicore_mode cooperative). "
            "batch4: one instance over 4 cores; the compiled model's runtime input batch becomes 4 "
            "(read model.inputs()[0].shape[0]). Quantization is INT8 post-training (Voyager SDK)."
        ),
    }


def folded_model(card: ModelCard, fold: tuple[int, int] = DEFAULT_FOLD) -> tuple[onnx.ModelProto, dict[str, int], bool]:
    """A pixel model's graph batch-folded to ``[1, C, H, W]``; returns (model, pass counts, softmax removed).

    The graph is converted to opset <= 17, pinned to one sample and constant-folded (so exporter-made
    ``Shape -> Gather -> Reshape`` chains become constants), and its in-graph pre-processing is folded
    into the first layer before every ``Gemm``/``MatMul`` becomes a 1x1 ``Conv``.
    """
    h, w = fold
    if h < 1 or w < 1:
        raise ConfigError(f"fold must be positive, got {h}x{w}")
    model = load_converted(card)
    passes = {"float16_to_float32": G.float16_to_float32(model)}
    argmax = _strip_argmax(model, card)
    softmax = G.strip_trailing_softmax(model) or argmax
    try:
        inp = G.image_input(model)
    except ValueError as err:
        raise ModelError(f"{card.onnx_path}: {err}") from err
    d = G.dims(inp)
    if len(d) in (2, 4) and (len(d) == 2 or d[2:] == [1, 1]):
        # pin one sample and fold constants, so that exporter-made Shape/Gather/Reshape chains become constants
        c = d[1] if isinstance(d[1], int) and d[1] > 0 else card.n_bands
        G.set_dims(inp, [1, c] + [1] * (len(d) - 2))
        for out in model.graph.output:
            G.set_dims(out, [None] * len(G.dims(out)))
        try:
            model = _simplify(model, inp.name, [1, c] + [1] * (len(d) - 2), required=False)
        except ModelError as err:  # folding works on most graphs without it: go on, say why
            log.warning("constant folding of '%s' skipped: %s", card.name, err)
        passes.update(F.fold_input_affine(model))
    try:
        model, counts = G.fold_pixel_model(model, h, w)
    except ValueError as err:
        raise ModelError(f"cannot fold pixel model '{card.name}' for Metis: {err}") from err
    passes.update(counts)
    passes["identity_casts_removed"] = G.remove_identity_casts(model)
    passes["divisions_to_multiplications"] = F.divisions_to_multiplications(model)
    model = _checked(model, f"folded graph of '{card.name}'")
    c = int(G.dims(G.image_input(model))[1] or 0)  # type: ignore[arg-type]
    if c != card.n_bands:
        raise ModelError(f"{card.onnx_path}: input has {c} channels, the card lists {card.n_bands} bands")
    return model, passes, softmax


def export(
    model: str | Path | ModelCard,
    out_dir: str | Path,
    cores: str = "single",
    *,
    patch_size: int | None = None,
    fold: tuple[int, int] | None = None,
    patches_per_call: int = 1,
) -> ExportResult:
    """Export ``model`` (built-in name, card, or ONNX with card) for Metis into ``out_dir``.

    Pixel models are batch-folded to ``fold`` = ``(H, W)`` pixels per call (default 256 x 256;
    :func:`cloudmask.metis.memory.auto_fold` picks the largest that fits a memory budget).
    ``patches_per_call`` (1, 4, 9, ...: a square) exports a segmentation model at a ``k x k`` patch input.
    Raises :class:`ModelError` when the graph cannot be made static or folding fails, and
    :class:`ConfigError` for a bad ``cores``, ``fold`` or ``patches_per_call``.
    """
    import onnx

    if cores not in CORES:
        raise ConfigError(f"cores must be one of {', '.join(CORES)}, got {cores!r}")
    card = load_model(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if card.kind == "patch-classifier" and patches_per_call != 1:
        if fold is not None:
            raise ConfigError(f"--fold is for pixel models; '{card.name}' is a patch classifier")
        if patches_per_call < 1:
            raise ConfigError(f"patches per call must be >= 1, got {patches_per_call}")
        return _export_stacked(card, out, cores, patches_per_call)
    side = int(round(patches_per_call**0.5))
    if patches_per_call < 1 or side * side != patches_per_call:
        raise ConfigError(f"patches per call must be a square (1, 4, 9, ...), got {patches_per_call}")
    if card.kind == "pixel":
        if patches_per_call != 1:
            raise ConfigError("--patches-per-call is for segmentation models; pixel models take --fold HxW")
        return _export_folded(card, out, cores, fold or DEFAULT_FOLD)
    if fold is not None:
        raise ConfigError(f"--fold is for pixel models; '{card.name}' is a {card.kind} model")
    if patches_per_call > 1:
        if card.kind != "segmentation":
            raise ConfigError("--patches-per-call needs a fully convolutional segmentation model or a patch "
                              "classifier")
        patch_size = (patch_size or card.patch_size) * side
    static, passes, softmax = static_model(card, patch_size, resize=patches_per_call > 1)
    shape = [int(v) for v in G.dims(G.image_input(static))]  # type: ignore[arg-type]
    onnx_path = out / "model.onnx"
    onnx.save(static, str(onnx_path))
    meta: dict[str, Any] = {
        "cores": cores,
        "aipu_cores": AIPU_CORES[cores],
        "exported_from": str(card.onnx_path),
        "input_shape": shape,
        "opset": G.opset(static),
        "host_preprocess": "reflectance (0-1) -> (x - mean) / std per band, float32 NCHW, batch 1",
        "host_postprocess": "softmax (if probabilities are wanted) and argmax over channels",
        "graph_passes": passes,
    }
    if patches_per_call > 1:
        meta["patches_per_call"] = patches_per_call
        meta["model_patch_size"] = card.patch_size
    extra = {k: v for k, v in card.extra.items() if k != "metis"}
    new_card = card.with_onnx(onnx_path, output="logits", patch_size=shape[2], extra={**extra, "metis": meta})
    if softmax:
        log.info("removed the graph's final Softmax: the host applies it (card output: logits)")
    elif card.output == "probabilities":
        new_card = card.with_onnx(onnx_path, patch_size=shape[2], extra={**extra, "metis": meta})
    card_path, config_path, script = _write_bundle(out, card, new_card, cores, shape)
    log.info("exported %s to %s (input %s, passes %s)", card.name, onnx_path, shape, passes)
    return ExportResult(
        out_dir=out,
        onnx_path=onnx_path,
        card_path=card_path,
        config_path=config_path,
        compile_script=script,
        card=new_card,
        input_shape=(shape[0], shape[1], shape[2], shape[3]),
        passes=passes,
    )


def _write_bundle(out: Path, card: ModelCard, new_card: ModelCard, cores: str,
                  shape: list[int]) -> tuple[Path, Path, Path]:
    """Beside the exported graph: its card, the compiler settings and the compile script (their paths)."""
    card_path = new_card.save(out / "card.yaml")
    config_path = out / "compiler_config.json"
    config = compiler_config(card, cores, shape)
    config["card"] = new_card.to_dict(relative_to=out)  # compile.py writes it back with metis_model set
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    script = out / "compile.py"
    with resources.as_file(resources.files("cloudmask.metis").joinpath("compile_script.py")) as src:
        shutil.copyfile(src, script)
    return card_path, config_path, script


def _export_folded(card: ModelCard, out: Path, cores: str, fold: tuple[int, int]) -> ExportResult:
    import onnx

    folded, passes, softmax = folded_model(card, fold)
    shape = [int(v) for v in G.dims(G.image_input(folded))]  # type: ignore[arg-type]
    onnx_path = out / "model.onnx"
    onnx.save(folded, str(onnx_path))
    original = [d if isinstance(d, int) else str(d) for d in G.dims(G.image_input(onnx.load(str(card.onnx_path))))]
    meta = {
        "cores": cores,
        "aipu_cores": AIPU_CORES[cores],
        "exported_from": str(card.onnx_path),
        "input_shape": shape,
        "opset": G.opset(folded),
        "pixels_per_call": fold[0] * fold[1],
        "host_preprocess": ("reflectance (0-1) -> (x - mean) / std per band; valid pixels packed densely, "
                            "pixel i of a block at row i // W, column i % W of [1, C, H, W]"),
        "host_postprocess": "softmax (if probabilities are wanted) and argmax over channels, scattered back",
        "graph_passes": passes,
    }
    extra = {k: v for k, v in card.extra.items() if k not in ("metis", "fold", "folded_from")}
    extra.update({"fold": [fold[0], fold[1]], "folded_from": {"kind": "pixel", "onnx": str(card.onnx_path),
                                                              "input": original}, "metis": meta})
    output = "logits" if softmax else card.output
    # a square fold doubles as the window size of `cloudmask metis calibration` (spatial windows of pixels)
    size = fold[0] if fold[0] == fold[1] and fold[0] >= 16 else card.patch_size
    new_card = card.with_onnx(onnx_path, output=output, extra=extra, patch_size=size)
    if softmax:
        log.info("removed the graph's final Softmax: the host applies it (card output: logits)")
    card_path, config_path, script = _write_bundle(out, card, new_card, cores, shape)
    log.info("exported pixel model %s folded to %s (passes %s)", card.name, shape, passes)
    return ExportResult(out_dir=out, onnx_path=onnx_path, card_path=card_path, config_path=config_path,
                        compile_script=script, card=new_card, input_shape=(shape[0], shape[1], shape[2], shape[3]),
                        passes=passes)


def _export_stacked(card: ModelCard, out: Path, cores: str, k: int) -> ExportResult:
    """A patch classifier exported patch-stacked: ``k`` patches per batch-1 call (see the module doc)."""
    import onnx

    from .check import check_model

    static, passes, softmax = static_model(card)
    c, p = card.n_bands, card.patch_size
    try:
        stacked, counts = F.stack_patch_classifier(static, k)
    except ValueError as err:
        raise ModelError(f"cannot export patch classifier '{card.name}' with {k} patches per call: {err}") from err
    passes.update(counts)
    stacked = _checked(stacked, f"patch-stacked graph of '{card.name}'")
    report = check_model(stacked)
    if not report.ok:
        bad = "; ".join(f"{n.op} {n.name!r}: {n.violations[0].detail}" for n in report.violations[:3])
        bad = bad or "; ".join(f"{v.rule}: {v.detail}" for v in report.model_violations[:3])
        raise ModelError(f"patch classifier '{card.name}' stacked {k} patches per call uses operators the Metis "
                         f"compiler does not accelerate ({bad}); export it with --patches-per-call 1")
    shape = [int(v) for v in G.dims(G.image_input(stacked))]  # type: ignore[arg-type]
    onnx_path = out / "model.onnx"
    onnx.save(stacked, str(onnx_path))
    meta = {
        "cores": cores,
        "aipu_cores": AIPU_CORES[cores],
        "exported_from": str(card.onnx_path),
        "input_shape": shape,
        "opset": G.opset(stacked),
        "patches_per_call": k,
        "host_preprocess": (f"normalised patches [k, C, p, p] = [{k}, {c}, {p}, {p}] given as [1, k*C, p, p] "
                            "(the same memory: patch i in channels i*C .. (i+1)*C - 1)"),
        "host_postprocess": "scores [1, k*K, 1, 1] read as [k, K]; softmax and argmax per patch",
        "graph_passes": passes,
    }
    extra = {key: v for key, v in card.extra.items() if key not in ("metis", "patches_per_call", "stacked_from")}
    extra.update({"patches_per_call": k, "stacked_from": {"onnx": str(card.onnx_path)}, "metis": meta})
    output = "logits" if softmax else card.output
    new_card = card.with_onnx(onnx_path, output=output, extra=extra)
    card_path, config_path, script = _write_bundle(out, card, new_card, cores, shape)
    log.info("exported patch classifier %s stacked %d per call to %s (passes %s)", card.name, k, shape, passes)
    return ExportResult(out_dir=out, onnx_path=onnx_path, card_path=card_path, config_path=config_path,
                        compile_script=script, card=new_card, input_shape=(shape[0], shape[1], shape[2], shape[3]),
                        passes=passes)
