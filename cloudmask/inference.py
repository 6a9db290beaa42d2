"""In-memory prediction: numpy or xarray in, class mask out, through the same streaming engine."""

from __future__ import annotations

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
from .xarray_predict import predict_xarray


def _to_band_first(
    array: np.ndarray, card: ModelCard, bands: Sequence[str] | None, nodata: float | None
) -> np.ndarray:
    """``(H, W, bands)`` reflectance -> ``(C, H, W)`` float32 in model band order, NaN = nodata."""
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
    out = np.moveaxis(np.asarray(array)[:, :, idx], -1, 0).astype(np.float32, copy=True)
    if nodata is not None:
        out[:, np.all(np.asarray(array) == nodata, axis=2)] = np.nan
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
        refl = _to_band_first(data, card, bands, nodata)
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

    return predict_xarray(data, card, probabilities=probabilities, backend=backend, config=cfg,
                          postprocess=postprocess)


__all__ = ["NODATA", "predict", "predict_array"]
