"""A calibration set for INT8 post-training quantization, stratified by predicted class mix.

Metis quantizes with 100-400 representative float32 NCHW batch-1 samples. Patches come in as
:class:`CalibrationPatch` tuples (scene id, window, normalised ``(C, H, W)`` float32 patch, nodata
fraction); a model predicts each patch's class mix, the patch is assigned to one stratum (clear land,
water, thick cloud, thin cloud, shadow, scene edge with nodata), reservoir-sampled per stratum
(bounded memory: candidates wait on disk), and the kept patches are shared out evenly over strata.

Output: ``calib_0000.npy`` ... (float32 ``(1, C, H, W)``) and ``manifest.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..engine.blender import class_scores
from ..errors import ConfigError
from ..models import ModelCard, load_model
from ..profiles import scene_spec
from ..reader import RasterSource
from ..runtime import OnnxRunner
from ..stac import SearchQuery, search

log = logging.getLogger(__name__)

STRATA: tuple[str, ...] = ("clear_land", "water", "thick_cloud", "thin_cloud", "shadow", "edge")
MANIFEST = "manifest.json"

Predict = Callable[[np.ndarray], np.ndarray]


class CalibrationPatch(NamedTuple):
    """One candidate patch: normalised float32 ``(C, H, W)`` in the card's band order."""

    scene_id: str
    window: Any
    patch: np.ndarray
    nodata_fraction: float = 0.0


@dataclass(frozen=True)
class StrataRules:
    """Thresholds of the class-mix strata (fractions of a patch's pixels; reflectance 0-1).

    A predicted-cloud pixel is *thick* when its blue reflectance is >= ``thick_blue`` (or, without a
    blue band, its cloud probability is >= ``thick_prob``), else *thin*. A predicted-clear pixel is
    *water* when NDWI = (green - nir) / (green + nir) > ``water_ndwi``. A patch goes to the first
    stratum whose share it reaches, in the order edge, shadow, thin cloud, water, thick cloud; else
    clear land. Patches with more than ``max_nodata`` nodata are skipped.
    """

    edge: float = 0.02
    shadow: float = 0.05
    thin_cloud: float = 0.10
    water: float = 0.10
    thick_cloud: float = 0.30
    max_nodata: float = 0.98
    thick_blue: float = 0.30
    thick_prob: float = 0.90
    water_ndwi: float = 0.10


def class_mix(
    patch: np.ndarray, scores: np.ndarray, card: ModelCard, rules: StrataRules = StrataRules()
) -> dict[str, float]:
    """Fractions of a patch's pixels per calibration category (``clear_land`` ... ``shadow``).

    ``patch`` is the normalised ``(C, H, W)`` input, ``scores`` the model's ``(K, H, W)`` output, or a patch
    classifier's ``(K,)`` (its label then holds for every pixel of the patch).
    """
    if scores.ndim == 1:
        scores = np.broadcast_to(scores[:, None, None], (scores.shape[0], *patch.shape[1:]))
    cls, probs = class_scores(card, scores, 0)
    p_cloud = probs[1] if probs.shape[0] > 1 else np.zeros(cls.shape, np.float32)
    refl = patch * np.asarray(card.std, np.float32)[:, None, None] + np.asarray(card.mean, np.float32)[:, None, None]
    band = {b: i for i, b in enumerate(card.bands)}
    cloud, clear = cls == 1, cls == 0
    thick = cloud & (refl[band["blue"]] >= rules.thick_blue if "blue" in band else p_cloud >= rules.thick_prob)
    nir = band.get("nir", band.get("nir08"))
    if "green" in band and nir is not None:
        g, n = refl[band["green"]], refl[nir]
        water = clear & ((g - n) / np.maximum(g + n, 1e-6) > rules.water_ndwi)
    else:
        water = np.zeros_like(clear)
    total = float(cls.size)
    return {
        "clear_land": float((clear & ~water).sum()) / total,
        "water": float(water.sum()) / total,
        "thick_cloud": float(thick.sum()) / total,
        "thin_cloud": float((cloud & ~thick).sum()) / total,
        "shadow": float((cls == 2).sum()) / total,
    }


def stratum(mix: Mapping[str, float], nodata_fraction: float, rules: StrataRules = StrataRules()) -> str:
    """The stratum of a patch from its class mix and nodata fraction (see :class:`StrataRules`)."""
    if nodata_fraction >= rules.edge:
        return "edge"
    for name in ("shadow", "thin_cloud", "water", "thick_cloud"):
        if mix[name] >= getattr(rules, name):
            return name
    return "clear_land"


def allocate(available: Mapping[str, int], total: int) -> dict[str, int]:
    """Share ``total`` samples evenly over strata, giving what a small stratum cannot use to the others."""
    left = dict(available)
    out = dict.fromkeys(available, 0)
    remaining = total
    while remaining > 0:
        open_ = [s for s in left if left[s] > 0]
        if not open_:
            break
        share = max(1, remaining // len(open_))
        for s in open_:
            take = min(share, left[s], remaining)
            out[s] += take
            left[s] -= take
            remaining -= take
            if remaining == 0:
                break
    return out


def _window_json(window: Any) -> Any:
    if window is None or isinstance(window, str | int | float):
        return window
    if all(hasattr(window, a) for a in ("col_off", "row_off", "width", "height")):
        return {a: int(getattr(window, a)) for a in ("col_off", "row_off", "width", "height")}
    if isinstance(window, Mapping):
        return {str(k): _window_json(v) for k, v in window.items()}
    if isinstance(window, Iterable):
        return [_window_json(v) for v in window]
    return str(window)


def make_predict(model: Any) -> Predict:
    """A ``(1, C, H, W) -> (1, K, H, W)`` function from a Runner, an ORT session or a callable."""
    if hasattr(model, "get_inputs") and hasattr(model, "run"):  # onnxruntime.InferenceSession
        name = model.get_inputs()[0].name
        return lambda x: np.asarray(model.run(None, {name: x})[0], np.float32)
    if hasattr(model, "run") and hasattr(model, "input_shape"):  # cloudmask Runner
        return lambda x: np.asarray(model.run(x), np.float32)
    if callable(model):
        return model  # type: ignore[no-any-return]
    raise ConfigError(f"cannot predict with {type(model).__name__}: pass a Runner, an ORT session or a callable")


def calibration_set(
    patches: Iterable[CalibrationPatch | tuple[str, Any, np.ndarray, float]],
    out_dir: str | Path,
    model: str | Path | ModelCard,
    *,
    runner: Any = None,
    samples: int = 200,
    seed: int = 0,
    rules: StrataRules = StrataRules(),
) -> Path:
    """Pick ``samples`` patches stratified by predicted class mix and write them to ``out_dir``.

    ``model`` gives the card (bands, normalisation, classes); ``runner`` predicts the class mix (a
    Runner, an ``onnxruntime.InferenceSession`` or a callable; default: an ONNX Runtime runner of the
    card). Returns the manifest path. Memory stays bounded: candidates wait in ``out_dir/.staging``.
    """
    if samples < 1:
        raise ConfigError("samples must be >= 1")
    card = load_model(model)
    if runner is None:
        runner = OnnxRunner(card)
    predict = make_predict(runner)
    out = Path(out_dir)
    staging = out / ".staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for old in out.glob("calib_*.npy"):
        old.unlink()
    rng = np.random.default_rng(seed)
    reservoir: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATA}
    seen = dict.fromkeys(STRATA, 0)
    skipped = 0
    shape: tuple[int, ...] | None = None
    for k, item in enumerate(patches):
        scene_id, window, patch, nodata = CalibrationPatch(*item)
        x = np.ascontiguousarray(patch, dtype=np.float32)
        if x.ndim != 3 or x.shape[0] != card.n_bands:
            raise ConfigError(f"patch {k} of {scene_id} has shape {x.shape}; expected ({card.n_bands}, H, W)")
        if shape is None:
            shape = x.shape
        elif x.shape != shape:
            raise ConfigError(f"patch {k} of {scene_id} has shape {x.shape}, earlier ones {shape}")
        if nodata > rules.max_nodata:
            skipped += 1
            continue
        scores = predict(x[None])[0]
        mix = class_mix(x, scores, card, rules)
        s = stratum(mix, float(nodata), rules)
        seen[s] += 1
        entry = {"scene_id": str(scene_id), "window": _window_json(window), "stratum": s,
                 "class_mix": {c: round(v, 4) for c, v in mix.items()},
                 "nodata_fraction": round(float(nodata), 4), "staged": staging / f"{k:08d}.npy"}
        pool = reservoir[s]
        if len(pool) < samples:  # reservoir sampling (algorithm R) per stratum
            pool.append(entry)
        else:
            j = int(rng.integers(0, seen[s]))
            if j >= samples:
                continue
            pool[j]["staged"].unlink(missing_ok=True)
            pool[j] = entry
        np.save(entry["staged"], x[None])
    quota = allocate({s: len(v) for s, v in reservoir.items()}, samples)
    items: list[dict[str, Any]] = []
    for s in STRATA:
        for entry in sorted(reservoir[s], key=lambda e: str(e["staged"]))[: quota[s]]:
            name = f"calib_{len(items):04d}.npy"
            Path(entry.pop("staged")).replace(out / name)
            items.append({"file": name, **entry})
    shutil.rmtree(staging)
    if not items:
        raise ConfigError("no usable calibration patches (every patch was nodata, or none were given)")
    manifest = {
        "model": card.name,
        "samples": len(items),
        "shape": [1, *shape] if shape else None,
        "dtype": "float32",
        "layout": "NCHW",
        "normalised": True,
        "seed": seed,
        "strata": {s: {"seen": seen[s], "kept": quota[s]} for s in STRATA},
        "skipped_nodata": skipped,
        "rules": asdict(rules),
        "items": items,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("calibration set: %d patches in %s, strata %s", len(items), out, manifest["strata"])
    if len(items) < 100:
        log.warning("only %d calibration patches; the Voyager SDK docs suggest 100-400", len(items))
    return path


def scene_patches(
    spec: Any, card: ModelCard, *, stride: int | None = None, resolution: float | None = None
) -> Iterator[CalibrationPatch]:
    """Normalised patches of one scene read through the reader, on a ``stride`` grid (pixels).

    The last row and column of windows touch the scene's far edges, so edge patches with nodata are
    candidates too. Nodata pixels are set to 0 after normalisation (the band mean), as the engine does.
    """
    size = card.patch_size
    step = stride or size // 2
    geobox = spec.geobox(float(resolution or card.resolution))
    h, w = geobox.shape
    if h < size or w < size:
        log.warning("scene %s (%dx%d px) is smaller than one patch; skipped", spec.id, h, w)
        return

    def starts(n: int) -> list[int]:
        return sorted(set(range(0, n - size + 1, step)) | {n - size})

    src = RasterSource(spec, card.bands, geobox)
    try:
        for r in starts(h):
            strip = src.read_rows(r, r + size)
            valid = ~np.isnan(strip).any(axis=0)
            card.normalise(strip, out=strip)
            strip[:, ~valid] = 0.0
            for c in starts(w):
                frac = 1.0 - float(valid[:, c:c + size].mean())
                if frac >= 1.0:
                    continue
                yield CalibrationPatch(spec.id, (r, c, size, size), np.ascontiguousarray(strip[:, :, c:c + size]),
                                       frac)
    finally:
        src.close()


def calibration_set_from_stac(
    stac: str,
    out_dir: str | Path,
    model: str | Path | ModelCard,
    *,
    samples: int = 200,
    collection: str | None = None,
    bbox: str | Sequence[float] | None = None,
    datetime: str | None = None,
    max_cloud: float | None = None,
    limit: int | None = None,
    stride: int | None = None,
    seed: int = 0,
) -> Path:
    """Calibration set from the scenes a STAC search returns (reader + grid -> :func:`calibration_set`).

    Candidates are drawn from every scene found (``stride`` pixels apart, default half a patch) and
    stratified by predicted class mix; returns the manifest path.
    """
    query = SearchQuery.build(collection=collection, bbox=bbox, datetime=datetime, max_cloud=max_cloud, limit=limit)
    card = load_model(model)
    items = search(stac, query)
    if not items:
        raise ConfigError(f"the search in {stac} found no scene to draw calibration patches from")
    specs = [scene_spec(it) for it in items]

    def candidates() -> Iterator[CalibrationPatch]:
        for spec in specs:
            yield from scene_patches(spec, card, stride=stride)

    return calibration_set(candidates(), out_dir, card, samples=samples, seed=seed)


def load_calibration(directory: str | Path, limit: int | None = None) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Manifest items and their ``(1, C, H, W)`` arrays from a calibration directory."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{d} is not a calibration set ({MANIFEST} unreadable: {err}); build one first") from err
    return [(item, np.load(d / item["file"])) for item in manifest["items"][:limit]]


def array_patches(
    scene_id: str,
    reflectance: np.ndarray,
    card: ModelCard,
    *,
    stride: int | None = None,
    nodata: np.ndarray | None = None,
) -> Iterator[CalibrationPatch]:
    """Patches of an in-memory ``(C, H, W)`` reflectance array (card band order), normalised by the card.

    Windows are ``(row, col, size, size)`` on a ``stride`` grid (default: the patch size); ``nodata``
    is an optional ``(H, W)`` bool mask. For numpy data and tests; scenes go through the reader.
    """
    size = card.patch_size
    step = stride or size
    _, h, w = reflectance.shape
    for r in range(0, h - size + 1, step):
        for c in range(0, w - size + 1, step):
            x = card.normalise(reflectance[:, r:r + size, c:c + size])
            frac = float(nodata[r:r + size, c:c + size].mean()) if nodata is not None else 0.0
            yield CalibrationPatch(scene_id, (r, c, size, size), x, frac)


def write_patch_set(
    out_dir: str | Path,
    patches: Iterable[tuple[CalibrationPatch, np.ndarray | None]],
    model: str = "",
) -> Path:
    """Write patches (and optional uint8 label masks, 255 = ignore) in calibration-set layout.

    Use it for a held-out set for :func:`cloudmask.metis.int8.int8_preview`; no stratification.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    for k, (p, labels) in enumerate(patches):
        name = f"calib_{k:04d}.npy"
        np.save(out / name, np.ascontiguousarray(p.patch, dtype=np.float32)[None])
        item = {"file": name, "scene_id": p.scene_id, "window": _window_json(p.window),
                "nodata_fraction": round(float(p.nodata_fraction), 4)}
        if labels is not None:
            item["labels"] = f"labels_{k:04d}.npy"
            np.save(out / item["labels"], np.asarray(labels, np.uint8))
        items.append(item)
    path = out / MANIFEST
    path.write_text(json.dumps({"model": model, "samples": len(items), "dtype": "float32",
                                "layout": "NCHW", "normalised": True, "items": items}, indent=1) + "\n")
    return path
