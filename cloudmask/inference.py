"""In-memory prediction: numpy or xarray in, class mask out, through the same streaming engine."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from .classes import collapse_names
from .engine import ArraySink, ArraySource, StreamConfig, StreamStats, output_shape, stream_scene
from .errors import ConfigError, MissingBandError
from .models import NODATA, ModelCard, load_model
from .postprocess import PostProcess, PostProcessSink, for_card
from .runtime import make_runners, ov_config
from .xarray_predict import check_reflectance, predict_xarray

log = logging.getLogger(__name__)


#: Sentinel-2 digital numbers to reflectance: ``DN * 1e-4`` (a card may say otherwise: ``dn_scale``/``dn_offset``).
DN_SCALE = 1e-4


def _dn_scale(card: ModelCard, scale: float | None, offset: float | None) -> tuple[float, float]:
    """``(scale, offset)`` of ``reflectance = DN * scale + offset``: the given ones, else the card's, else 1e-4, 0."""
    s = float(scale) if scale is not None else float(card.extra.get("dn_scale", DN_SCALE))
    o = float(offset) if offset is not None else float(card.extra.get("dn_offset", 0.0))
    return s, o


def _to_band_first(
    array: np.ndarray, card: ModelCard, bands: Sequence[str] | None, nodata: float | None,
    scale: float | None = None, offset: float | None = None,
) -> np.ndarray:
    """``(H, W, bands)`` reflectance -> ``(C, H, W)`` float32 in model band order, NaN = nodata.

    Integer input is digital numbers: ``DN * scale + offset`` (default the card's ``dn_scale``/``dn_offset``,
    else 1e-4 and 0; ``nodata`` defaults to 0 for them); float input is reflectance unless ``scale`` is
    given. ±inf and NaN are nodata; input whose range cannot be reflectance is refused (:func:`check_reflectance`).
    """
    if array.ndim != 3:
        raise ConfigError(f"predict takes an (H, W, bands) array, got shape {array.shape}")
    names = list(bands) if bands is not None else list(card.bands)
    if len(names) != array.shape[2]:
        raise ConfigError(
            f"array has {array.shape[2]} bands but {len(names)} band names ({names}); pass bands=[...] "
            f"naming each band with STAC common names"
        )
    missing = [b for b in card.bands if b not in names]
    if missing:
        raise MissingBandError(f"model '{card.name}' needs band(s) {missing}; the array has {names}")
    idx = [names.index(b) for b in card.bands]
    raw = np.asarray(array)
    is_dn = raw.dtype.kind in "iub"
    if is_dn and nodata is None:
        nodata = 0  # Sentinel-2 DN: 0 is no data
    out = np.moveaxis(raw[:, :, idx], -1, 0).astype(np.float32, copy=True)
    if is_dn or scale is not None:
        s, o = _dn_scale(card, scale, offset)
        if is_dn and scale is None:
            log.info("predict: %s input read as digital numbers, reflectance = DN * %g + %g "
                     "(pass scale=/offset= to change)", raw.dtype, s, o)
        out *= np.float32(s)
        if o:
            out += np.float32(o)
    if nodata is not None:
        out[:, np.all(raw == nodata, axis=2)] = np.nan
    finite = np.isfinite(out)
    if not finite.all():
        out[~finite] = np.nan  # +inf/-inf: no data, never a (clear) value
    check_reflectance(out, "the input" if not is_dn else f"the {raw.dtype} input read as DN * scale + offset")
    return out


def predict_array(
    reflectance: np.ndarray,
    model: str | ModelCard = "ukis-6b-l2a",
    *,
    backend: str = "onnxruntime",
    config: StreamConfig | None = None,
    runners: Sequence[Any] | None = None,
    postprocess: PostProcess | Mapping[str, Any] | None = None,
    scl: np.ndarray | None = None,
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray | None, StreamStats]:
    """Mask ``(C, H, W)`` float32 reflectance in model band order (NaN = nodata).

    Returns ``(classes uint8 (H, W), probabilities uint8 (K, H, W) or None, stats)``. ``postprocess``
    (:mod:`cloudmask.postprocess`) adds to the card's own post-processing defaults; ``scl`` is the
    provider's L2A scene classification on the same grid (``(H, W)`` uint8) for ``scl: fill|veto``.
    ``precision`` (auto, f32, bf16, int8) applies to ``backend="openvino"``.
    """
    card = load_model(model)
    cfg = config or StreamConfig()
    post = for_card(card, postprocess)
    want_probs = cfg.probabilities
    if post.needs_probabilities and not cfg.probabilities:
        cfg = replace(cfg, probabilities=True)
    runs = runners if runners is not None else make_runners(card, backend, ov=ov_config(precision))
    h, w = reflectance.shape[1:]
    oh, ow = output_shape(card, h, w)
    sink = ArraySink(oh, ow, probabilities=want_probs, classes=len(card.class_table))
    if post.scl is not None and (scl is None or np.shape(scl) != (oh, ow)):
        raise ConfigError(f"post-processing scl={post.scl!r} needs scl=<(H, W) uint8 SCL array> of shape {(oh, ow)}")
    provider = None if scl is None else (lambda a, b: np.asarray(scl)[a:b])
    target = PostProcessSink(sink, post, oh, ow, provider=provider) if post.active else sink
    stats = stream_scene(ArraySource(reflectance), card, runs, target, cfg)
    return sink.classes, sink.probabilities, stats


#: The model :func:`predict` uses when neither the call nor the data (``open_scene``'s attrs) name one.
DEFAULT_MODEL = "ukis-6b-l2a"


def _model_of(data: Any, model: str | ModelCard | None) -> str | ModelCard:
    """``model``, else the one :func:`cloudmask.open_scene` recorded in ``data.attrs['model']``."""
    if model is not None and str(model) != "auto":
        return model
    recorded = getattr(data, "attrs", {}).get("model") if not isinstance(data, np.ndarray) else None
    return str(recorded) if recorded else DEFAULT_MODEL


def predict(
    data: Any,
    model: str | ModelCard | None = None,
    *,
    bands: Sequence[str] | None = None,
    nodata: float | None = None,
    probabilities: bool = False,
    backend: str = "onnxruntime",
    config: StreamConfig | None = None,
    threshold: float | None = None,
    postprocess: PostProcess | Mapping[str, Any] | None = None,
    valid: bool = False,
    scl: np.ndarray | None = None,
    classes: str = "all",
    scale: float | None = None,
    offset: float | None = None,
    precision: str = "auto",
) -> Any:
    """Class mask (0 clear, 1 cloud, 2 shadow, 255 nodata) of reflectance already in memory.

    ``data`` is an ``(H, W, bands)`` numpy array of reflectance (0–1; band names in ``bands``, default
    the model's band order; NaN or ``nodata`` in every band marks invalid pixels) — returns a uint8
    ``(H, W)`` array — or an xarray DataArray with a ``band`` dimension labelled with STAC common
    names / a Dataset with one variable per band — returns a DataArray on the same coordinates (see
    :mod:`cloudmask.xarray_predict`). With ``probabilities=True`` returns ``(mask, probabilities)``.

    ``model`` defaults to the one :func:`cloudmask.open_scene` recorded in ``data.attrs["model"]``,
    else ``ukis-6b-l2a``; a warning says when xarray data are not at the model's resolution.
    Dask-backed xarray input gives a lazy result (computed, in bounded memory, when asked for).

    Post-processing (:mod:`cloudmask.postprocess`): ``threshold`` is the cloud probability (0–1) above
    which a pixel is cloud (s2cloudless: default 0.4); ``postprocess`` a :class:`PostProcess` or a
    mapping of its options (``thresholds``, ``average_over``, ``dilation_size``, ``buffer_m``,
    ``min_region``, ``scl`` with the SCL array in ``scl``). With ``valid=True`` (numpy input) a boolean
    ``(H, W)`` valid mask (the pixels that have a class; the probabilities are 0 elsewhere) is appended
    to the returned tuple.

    Classes are those of the model's card (3 thin cloud and 4 snow where it has them; see
    :mod:`cloudmask.classes`); ``classes="cloud-shadow"`` folds them onto 0 clear, 1 cloud, 2 shadow.

    Integer input is digital numbers: ``reflectance = DN * scale + offset`` with the given
    ``scale``/``offset``, else the card's ``dn_scale``/``dn_offset``, else 1e-4 and 0 (``nodata``
    defaults to 0 for it); with ``scale`` float input is scaled too. ±inf is nodata. Input whose
    values cannot be reflectance (median above 3, e.g. DN as floats) is refused with the fix.

    ``backend="openvino"`` takes ``precision`` (auto, f32, bf16, int8; numpy input).
    """
    card = load_model(_model_of(data, model))
    if classes != "all":
        card = replace(card, classes=collapse_names(card.classes, classes))
    cfg = config or StreamConfig()
    if probabilities and not cfg.probabilities:
        cfg = replace(cfg, probabilities=True)
    if threshold is not None:
        post = PostProcess.from_options(postprocess, threshold=threshold)
        postprocess = post.as_dict()
    if isinstance(data, np.ndarray):
        refl = _to_band_first(data, card, bands, nodata, scale, offset)
        mask, probs, _ = predict_array(refl, card, backend=backend, config=cfg, postprocess=postprocess, scl=scl,
                                       precision=precision)
        out: tuple[Any, ...] = (mask,) + ((probs,) if probabilities else ())
        if valid:
            out += (mask != NODATA,)
        return out if len(out) > 1 else mask
    if precision != "auto":
        raise ConfigError("precision is for numpy input; with xarray call cloudmask.xarray_predict.predict_xarray("
                          "data, card, runners=make_runners(card, 'openvino', ov=OvConfig(precision=...)))")
    if valid:
        raise ConfigError("valid=True is for numpy input; with xarray use cloudmask.xarray_predict.valid_mask or mask != 255")

    variables = data.data_vars.values() if hasattr(data, "data_vars") else [data]
    is_dn = any(getattr(v, "dtype", np.dtype(float)).kind in "iub" for v in variables)
    if is_dn or scale is not None or offset is not None:
        s, o = _dn_scale(card, scale, offset)
        if is_dn:  # DN: nodata (default 0) first
            if scale is None:
                log.info("predict: integer input read as digital numbers, reflectance = DN * %g + %g "
                         "(pass scale=/offset= to change)", s, o)
            data = data.where(data != (0 if nodata is None else nodata))
        data = data * s + o
    return predict_xarray(data, card, probabilities=probabilities, backend=backend, config=cfg,
                          postprocess=postprocess)


__all__ = ["NODATA", "predict", "predict_array"]
