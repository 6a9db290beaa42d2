"""OpenVINO CPU backend (``--backend openvino``, extra ``s2-cloudmask[openvino]``) at f32, bf16 or int8.

``precision``: ``auto`` runs bf16 where the CPU reports it (``OPTIMIZATION_CAPABILITIES`` has ``BF16``:
AVX512-BF16 or AMX), else f32; ``f32``; ``bf16`` (f32, with a warning, on a CPU without it); ``int8``:
post-training quantisation with NNCF, calibrated on real patches (a calibration set from ``cloudmask
metis calibration``, or the real demo chips for models of their bands), accepted only when its argmax
agrees with f32 on at least :data:`INT8_MIN_AGREEMENT` of the calibration pixels, else refused loudly
(a warning) in favour of ``auto``'s float precision.

The model is compiled once per process (one compiled model, one stream per instance, one infer
request per runner) and OpenVINO's own cache keeps the compiled blob under ``<cache>/openvino``
(``$CLOUDMASK_CACHE_DIR`` or the user cache dir, like the pinned ONNX graphs); a quantised model
is kept there as IR with its agreement. Graphs OpenVINO cannot read (s2cloudless's tree ensemble,
``ai.onnx.ml``) run on ONNX Runtime instead, with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, RuntimeBackendError
from ..models import ModelCard
from ..user_cache import cache_dir
from . import graph_cache
from .shapes import PIXEL_BLOCK, fold_of

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16", "int8")
#: Share of calibration pixels (patches, for a patch classifier) whose int8 argmax must equal f32's.
INT8_MIN_AGREEMENT = 0.995
#: Bump when the quantisation recipe changes what is cached.
QUANT_VERSION = 2


@dataclass(frozen=True)
class OvConfig:
    """OpenVINO options: ``precision`` (one of :data:`PRECISIONS`), threads per instance (0 = cores //
    instances), ``calibration`` (a calibration-set directory for int8; None = the real demo chips) and the
    int8 acceptance bar ``min_agreement`` (share of calibration pixels equal to f32)."""

    precision: str = "auto"
    threads: int = 0
    calibration: str | None = None
    min_agreement: float = INT8_MIN_AGREEMENT

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is unknown: use one of {', '.join(PRECISIONS)}")


class UnsupportedModel(RuntimeBackendError):
    """OpenVINO cannot read this graph (e.g. a tree ensemble); ONNX Runtime can."""


# ------------------------------------------------------------------------------------------------ core

_CORE_LOCK = threading.Lock()
_COMPILED: dict[tuple[Any, ...], _Compiled] = {}


def _import_openvino() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise RuntimeBackendError(
            "--backend openvino needs the openvino package: pip install 's2-cloudmask[openvino]'"
        ) from err
    return openvino


@functools.cache
def core() -> Any:
    """This process's ``openvino.Core``, its model cache under ``<cache>/openvino`` (unless
    ``CLOUDMASK_GRAPH_CACHE=0``)."""
    ov = _import_openvino()
    c = ov.Core()
    if graph_cache.enabled():
        path = cache_dir() / "openvino"
        try:
            path.mkdir(parents=True, exist_ok=True)
            c.set_property({"CACHE_DIR": str(path)})
        except Exception as err:  # noqa: BLE001 - an unwritable cache only costs a compile
            log.debug("OpenVINO model cache off: %s", err)
    return c


def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32``, ``INT8``, ``BF16``)."""
    return tuple(str(c) for c in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def float_precision(requested: str) -> str:
    """The float precision that runs for ``requested`` (auto/f32/bf16) on this CPU: ``bf16`` or ``f32``."""
    has_bf16 = "BF16" in cpu_capabilities()
    if requested == "f32":
        return "f32"
    if requested == "bf16" and not has_bf16:
        log.warning("this CPU reports no BF16 (OpenVINO capabilities %s): running f32 instead of bf16",
                    ", ".join(cpu_capabilities()))
    return "bf16" if has_bf16 else "f32"


# ------------------------------------------------------------------------------------------------ graph

def _read(card: ModelCard) -> Any:
    """The card's ONNX graph as an ``openvino.Model``; :class:`UnsupportedModel` when OpenVINO cannot read it."""
    if not Path(card.onnx_path).is_file():
        raise ModelError(f"model '{card.name}': no ONNX file at {card.onnx_path}")
    c = core()  # a missing or broken openvino install is not the model's fault
    try:
        return c.read_model(str(card.onnx_path))
    except Exception as err:  # openvino raises RuntimeError for unconverted ops
        first = str(err).strip().splitlines()
        why = next((ln.strip("- ") for ln in first if "No conversion rule" in ln), first[-1] if first else "")
        raise UnsupportedModel(f"OpenVINO cannot read model '{card.name}': {why}") from err


def _pin(model: Any, card: ModelCard, batch: int, block: int | None) -> tuple[int, ...]:
    """Reshape ``model`` to the runner's static input shape (as :func:`~cloudmask.runtime.onnx.static_graph`
    / ``pixel_graph``) and check it against the card; returns the input shape."""
    if len(model.inputs) != 1:
        raise ModelError(f"model '{card.name}': expected one input, found {len(model.inputs)}")
    dims = [d.get_length() if d.is_static else 0 for d in model.input(0).get_partial_shape()]
    if card.kind == "pixel":
        ok = len(dims) == 2 or (len(dims) == 4 and (dims[2:] == [1, 1] or (dims[0] == 1 and all(dims[2:]))))
        if not ok:
            raise ModelError(f"{card.onnx_path}: a pixel model takes [N, C], [N, C, 1, 1] or folded [1, C, H, W], "
                             f"got {dims}; set the card's kind to match the model")
        shape = (dims[0] or block or PIXEL_BLOCK, *dims[1:])
        fold = fold_of(card)
        if fold is not None and tuple(shape[2:]) != fold:
            raise ModelError(f"model '{card.name}': the card's fold {list(fold)} does not match the ONNX input "
                             f"{list(shape)}; re-export or fix the card's 'fold'")
    else:
        if len(dims) != 4:
            raise ModelError(f"{card.onnx_path}: input must be 4-D NCHW, got {len(dims)} dims")
        p = card.patch_size
        if any(d and d != v for d, v in zip(dims[2:], (p, p), strict=True)):
            raise ModelError(f"{card.onnx_path}: input is fixed at {dims}, cannot run {p}x{p} patches")
        shape = (batch, dims[1] or card.n_bands, p, p)
    if shape[1] != card.n_bands:
        raise ModelError(f"model '{card.name}': the ONNX input has {shape[1]} channels but the card lists "
                         f"{card.n_bands} bands; fix the card's 'bands'")
    model.reshape({model.input(0).get_any_name(): list(shape)})
    return tuple(shape)


# ------------------------------------------------------------------------------------------ calibration

def _demo_patches(card: ModelCard) -> list[np.ndarray]:
    """Normalised ``(C, P, P)`` patches of the real demo chips (at their 10 m), in the card's band order:
    the windows of a ``P`` grid (the last row and column touching the far edges), at most half nodata."""
    import pystac

    from ..profiles import scene_spec
    from ..reader import RasterSource
    from ..sample import demo_catalog

    p = card.patch_size
    out: list[np.ndarray] = []
    for item in pystac.Catalog.from_file(str(demo_catalog())).get_items(recursive=True):
        spec = scene_spec(item)
        if not set(card.bands) <= set(spec.bands):
            missing = sorted(set(card.bands) - set(spec.bands))
            raise ConfigError(
                f"--precision int8 calibrates on real patches of model '{card.name}''s bands; the demo chips lack "
                f"{', '.join(missing)}: build a calibration set (cloudmask metis calibration --model {card.name} "
                "...) and pass it with --calibration DIR (job key calibration, API keyword calibration)")
        geobox = spec.geobox(10.0)
        h, w = geobox.shape
        src = RasterSource(spec, card.bands, geobox)
        try:
            strip = src.read_rows(0, h)
        finally:
            src.close()
        valid = ~np.isnan(strip).any(axis=0)
        card.normalise(strip, out=strip)
        strip[:, ~valid] = 0.0  # nodata as the engine feeds it
        for r in sorted({*range(0, h - p + 1, p), h - p} if h >= p else ()):
            for c in sorted({*range(0, w - p + 1, p), w - p} if w >= p else ()):
                if valid[r:r + p, c:c + p].mean() >= 0.5:
                    out.append(np.ascontiguousarray(strip[:, r:r + p, c:c + p]))
    return out


def _load_set(directory: str | Path) -> list[np.ndarray]:
    """The ``(1, C, H, W)`` arrays of a calibration set (``manifest.json`` + ``calib_*.npy``, as written by
    :func:`cloudmask.metis.calibration.calibration_set`)."""
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        return [np.load(d / item["file"]) for item in manifest["items"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{d} is not a readable calibration set ({err}); build one with "
                          "cloudmask metis calibration") from err


def calibration_patches(card: ModelCard, calibration: str | Path | None) -> tuple[list[np.ndarray], str]:
    """Normalised ``(C, H, W)`` float32 calibration patches and a description of where they came from."""
    if calibration is None:
        patches = _demo_patches(card)
        where = f"{len(patches)} patches of the real demo chips"
    else:
        patches = [x[0] for x in _load_set(calibration)]
        where = f"{len(patches)} patches of the calibration set {calibration}"
    if not patches:
        raise ConfigError(f"no calibration patches for model '{card.name}' ({where})")
    bad = [x.shape for x in patches if x.ndim != 3 or x.shape[0] != card.n_bands]
    if bad:
        raise ConfigError(f"calibration patches have shape {bad[0]}, model '{card.name}' takes {card.n_bands} bands: "
                          "build the set for this model (cloudmask metis calibration --model ...)")
    return [np.ascontiguousarray(x, np.float32) for x in patches], where


def model_inputs(patches: Sequence[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Calibration patches ``(C, H, W)`` as inputs of ``shape``: batches of patches, or pixel blocks
    ``[N, C]`` / ``[N, C, 1, 1]`` (the last one padded by repeating pixels)."""
    if len(shape) == 4 and shape[2:] != (1, 1):
        if any(x.shape[1:] != shape[2:] for x in patches):
            raise ConfigError(f"calibration patches are {patches[0].shape[1:]} px, the model takes {shape[2:]}: "
                              "build a calibration set at the model's patch size")
        n = shape[0]
        groups = [list(patches[i:i + n]) for i in range(0, len(patches), n)]
        return [np.stack(g + [g[-1]] * (n - len(g))) for g in groups]
    pixels = np.concatenate([x.reshape(x.shape[0], -1).T for x in patches])  # (pixels, C)
    n = shape[0]
    out = []
    for i in range(0, len(pixels), n):
        blk = pixels[i:i + n]
        if len(blk) < n:
            blk = np.concatenate([blk, pixels[: n - len(blk)]]) if len(pixels) >= n else np.resize(blk, (n, blk.shape[1]))
        out.append(np.ascontiguousarray(blk.reshape(shape), np.float32))
    return out


def argmax_agreement(a: Iterable[np.ndarray], b: Iterable[np.ndarray]) -> float:
    """Share of equal argmax over the class axis (axis 1) between two lists of score arrays."""
    same = total = 0
    for x, y in zip(a, b, strict=True):
        eq = np.argmax(x, axis=1) == np.argmax(y, axis=1)
        same += int(eq.sum())
        total += eq.size
    return same / total if total else 0.0


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "none"


def _set_identity(calibration: str | Path | None) -> str:
    if calibration is None:
        from ..sample import demo_catalog

        return "demo:" + str(demo_catalog().parent)
    manifest = Path(calibration) / "manifest.json"
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError as err:
        raise ConfigError(f"{calibration} is not a calibration set ({err}); build one with "
                          "cloudmask metis calibration") from err


def _compile(model: Any, precision: str, streams: int = 1, threads: int = 0) -> Any:
    props: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": streams,
                             "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        props["INFERENCE_NUM_THREADS"] = threads
    return core().compile_model(model, "CPU", props)


def quantized(model: Any, card: ModelCard, shape: tuple[int, ...], cfg: OvConfig, floats: str) -> tuple[Any, float] | None:
    """``model`` quantised to int8 with NNCF on real calibration patches and its agreement with f32, or None
    when it falls short of ``cfg.min_agreement`` (logged as a warning). Cached on disk as IR."""
    key_parts = (graph_cache.graph_key(card.onnx_path, ("ov-int8", *shape)), _set_identity(cfg.calibration), floats,
                 _version("openvino"), _version("nncf"), QUANT_VERSION)
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()[:32]
    where = cache_dir() / "openvino" / "int8"
    xml, meta = where / f"{key}.xml", where / f"{key}.json"
    if graph_cache.enabled() and key_parts[0] and meta.is_file() and xml.is_file():
        try:
            info = json.loads(meta.read_text())
            agreement = float(info["agreement"])
            q = core().read_model(str(xml)) if agreement >= cfg.min_agreement else None
            log.debug("int8 model of %s from the cache (%s)", card.name, xml)
            return _accept(q, agreement, cfg, card, info.get("calibration", ""))
        except Exception as err:  # noqa: BLE001 - a broken cache entry is rebuilt
            log.debug("int8 cache entry %s unusable: %s", key, err)
    try:
        import nncf
    except ImportError as err:
        raise RuntimeBackendError("--precision int8 needs nncf: pip install 's2-cloudmask[openvino]'") from err
    patches, source = calibration_patches(card, cfg.calibration)
    inputs = model_inputs(patches, shape)
    log.info("quantising %s to int8 with NNCF on %s", card.name, source)
    q = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs), preset=nncf.QuantizationPreset.MIXED,
                      ignored_scope=_kept_float(nncf, model))
    ref, got = _compile(model, "f32").create_infer_request(), _compile(q, floats).create_infer_request()
    agreement = argmax_agreement((ref.infer({0: x})[0].copy() for x in inputs),
                                 (got.infer({0: x})[0].copy() for x in inputs))
    if graph_cache.enabled() and key_parts[0]:
        _store(q, xml, meta, {"agreement": agreement, "calibration": source, "model": card.name})
    return _accept(q, agreement, cfg, card, source)


def _kept_float(nncf: Any, model: Any) -> Any:
    """The first and last convolution stay float (in a trial on ukis-6b-l1c and its real labelled patch this
    raised the int8 argmax's agreement with f32 from about 95 % to 98.4 %)."""
    convs = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    names = [convs[0], convs[-1]] if len(convs) >= 3 else []
    return nncf.IgnoredScope(names=names, validate=False)


def _accept(q: Any, agreement: float, cfg: OvConfig, card: ModelCard, source: str) -> tuple[Any, float] | None:
    if agreement < cfg.min_agreement:
        log.warning("int8 %s keeps only %.2f %% of the f32 mask pixels on %s (needs %.2f %%): int8 refused, "
                    "running float instead", card.name, 100 * agreement, source, 100 * cfg.min_agreement)
        return None
    log.info("int8 %s agrees with f32 on %.2f %% of %s", card.name, 100 * agreement, source)
    return q, agreement


def _store(q: Any, xml: Path, meta: Path, info: dict[str, Any]) -> None:
    """Save the IR (``.xml`` + ``.bin``) then its metadata, each by rename; failures only cost a re-quantisation."""
    try:
        ov = _import_openvino()
        xml.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=xml.parent))
        try:
            ov.save_model(q, str(tmp / "m.xml"), compress_to_fp16=False)
            os.replace(tmp / "m.bin", xml.with_suffix(".bin"))
            os.replace(tmp / "m.xml", xml)
            (tmp / "m.json").write_text(json.dumps(info))
            os.replace(tmp / "m.json", meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as err:  # noqa: BLE001 - an unwritable cache must never fail a run
        log.debug("int8 cache: cannot write %s: %s", xml, err)


# ------------------------------------------------------------------------------------------------ runner

@dataclass
class _Compiled:
    model: Any  # openvino.CompiledModel
    shape: tuple[int, ...]
    precision: str  # what runs: f32, bf16 or int8 (+ its float part)
    agreement: float | None = None  # int8 vs f32 on the calibration patches


def compiled(card: ModelCard, *, batch: int = 1, block: int | None = None, cfg: OvConfig = OvConfig(),
             streams: int = 1, threads: int = 0) -> _Compiled:
    """The card's compiled model for these settings, compiled once per process (thread-safe)."""
    key = (card.name, str(card.onnx_path), batch, block, cfg, streams, threads)
    with _CORE_LOCK:
        hit = _COMPILED.get(key)
        if hit is not None:
            return hit
        model = _read(card)
        shape = _pin(model, card, batch, block)
        floats = float_precision("auto" if cfg.precision == "int8" else cfg.precision)
        precision, agreement = floats, None
        if cfg.precision == "int8":
            got = quantized(model, card, shape, cfg, floats)
            if got is not None:
                model, agreement = got
                precision = "int8"
        try:
            cm = _compile(model, floats, streams, streams * threads)
        except Exception as err:
            raise ModelError(f"OpenVINO cannot compile model '{card.name}': {err}") from err
        hit = _COMPILED[key] = _Compiled(cm, shape, precision, agreement)
        log.info("OpenVINO %s on CPU: %s (asked %s), input %s, %d stream(s) x %d thread(s)", card.name, precision,
                 cfg.precision, list(shape), streams, threads)
        return hit


class OpenVinoRunner:
    """A Runner over one infer request of a compiled OpenVINO model (one stream of it).

    ``precision`` is what runs (``f32``, ``bf16`` or ``int8``); ``backend`` is ``"openvino"``. An infer
    request is not thread-safe, so calls take a lock (runners cached per process may serve two scenes).
    """

    backend = "openvino"

    def __init__(self, card: ModelCard, comp: _Compiled) -> None:
        self.card = card
        self._compiled = comp
        self._request: Any = comp.model.create_infer_request()
        self.precision = comp.precision
        self.agreement = comp.agreement
        self._lock = threading.Lock()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._compiled.shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self._request.infer({0: batch})
            return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def close(self) -> None:
        self._request = None


def make_openvino_runners(card: ModelCard, *, instances: int | None = None, batch: int = 1, block: int | None = None,
                          cfg: OvConfig | None = None) -> list[Any]:
    """``instances`` OpenVINO runners (default as ONNX Runtime: two on a multi-core CPU, each of
    cores // instances threads) sharing one compiled model; ONNX Runtime runners, with a warning, for a
    graph OpenVINO cannot read."""
    cfg = cfg or OvConfig()
    cpus = os.cpu_count() or 1
    n = instances or (2 if cpus >= 2 else 1)
    threads = cfg.threads or max(1, cpus // n)
    try:
        comp = compiled(card, batch=batch, block=block, cfg=cfg, streams=n, threads=threads)
    except UnsupportedModel as err:
        from .onnx import OnnxRunner, OrtConfig

        log.warning("%s; model '%s' runs on ONNX Runtime (f32) instead", err, card.name)
        return [OnnxRunner(card, batch=batch, block=block, config=OrtConfig(intra_op_threads=threads))
                for _ in range(n)]
    return [OpenVinoRunner(card, comp) for _ in range(n)]
