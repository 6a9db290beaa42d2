"""Post-processing of masks after argmax, on the engine's streamed row blocks, in bounded memory.

:class:`PostProcess` holds the options; :class:`PostProcessSink` wraps any
:class:`~cloudmask.engine.io.MaskSink` and applies them while the engine streams, holding only a
few rows of context (``halo`` rows above and below the rows it writes), so the engine needs no
change. The steps, in order:

1. **thresholds** (``{class: probability}``, 0–1): a pixel whose probability of a thresholded class
   is above its threshold takes that class (the first listed wins); a pixel argmax gave to a
   thresholded class but whose probability is not above it takes the best of the other classes.
   With ``average_over`` (pixels) the probabilities of thresholded classes are first averaged over a
   disk of that radius (s2cloudless's ``get_cloud_masks``: ``cv2.filter2D``, reflected edges).
2. **min_region** (pixels): connected (8-neighbour) regions of any non-clear class smaller than
   this become clear.
3. **buffers**: cloud (thick and thin) and shadow grow by a disk, given in metres
   (``buffer_m``: one number for both, or ``{cloud: m, shadow: m}``) and/or in pixels
   (``dilation_size``, s2cloudless's dilation of the cloud mask). A buffer only turns clear pixels;
   cloud is buffered before shadow, so cloud wins where they meet.
4. **provider mask** (``scl``: ``fill`` or ``veto``): the Sentinel-2 L2A scene classification of the
   item. ``fill``: where the mask says clear, SCL's cloud (8, 9), thin cirrus (10), cloud shadow (3)
   and snow (11) fill in (as thin cloud / snow only where the mask has those classes). ``veto``: where
   SCL says vegetation, bare soil or water (4, 5, 6) or snow, the mask's cloud, thin cloud and
   shadow become clear (snow where SCL says snow and the mask has a snow class).

Nodata (255) is never changed and never grown into; probabilities are passed through unchanged
(zero where the mask is nodata).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from scipy import ndimage

from .classes import CLEAR, CLOUD, NODATA, SHADOW, SNOW, THIN_CLOUD, canonical, class_value
from .errors import ConfigError, ReadError

log = logging.getLogger(__name__)

SclMode = Literal["fill", "veto"]
SCL_MODES: tuple[str, ...] = ("fill", "veto")
#: Sentinel-2 L2A scene classification values.
SCL_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 3, 8, 9, 10, 11
SCL_CLEAR = (4, 5, 6)

#: Reads rows ``[start, stop)`` of the provider's classification on the mask grid (uint8, full width).
ProviderRows = Callable[[int, int], np.ndarray]


def disk(radius: float) -> np.ndarray:
    """A disk footprint ``x² + y² <= radius²`` (the same as s2cloudless's ``cv2_disk`` for integer radii)."""
    r = int(math.floor(radius))
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


@dataclass(frozen=True)
class PostProcess:
    """Post-processing options (see the module docstring); the default does nothing.

    ``resolution`` (metres per pixel) converts ``buffer_m`` to pixels; the pipeline sets it from the
    mask grid.
    """

    thresholds: Mapping[str, float] = field(default_factory=dict)
    average_over: int = 0
    dilation_size: int = 0
    buffer_m: Mapping[str, float] = field(default_factory=dict)
    min_region: int = 0
    scl: SclMode | None = None
    resolution: float = 0.0

    def __post_init__(self) -> None:
        th = {}
        for name, t in dict(self.thresholds).items():
            try:
                cname = canonical(name)
            except ValueError as err:
                raise ConfigError(f"threshold: {err}") from err
            if not 0.0 <= float(t) <= 1.0:
                raise ConfigError(f"threshold for {cname} must be a probability in [0, 1], got {t}")
            th[cname] = float(t)
        object.__setattr__(self, "thresholds", th)
        buf = dict(self.buffer_m) if isinstance(self.buffer_m, Mapping) else {"cloud": float(self.buffer_m),
                                                                                "shadow": float(self.buffer_m)}
        bad = [k for k in buf if k not in ("cloud", "shadow")]
        if bad or any(float(v) < 0 for v in buf.values()):
            raise ConfigError(f"buffer: give metres >= 0 for 'cloud' and/or 'shadow', got {buf}")
        object.__setattr__(self, "buffer_m", {k: float(v) for k, v in buf.items() if float(v) > 0})
        for name in ("average_over", "dilation_size", "min_region"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0 pixels, got {getattr(self, name)}")
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.average_over and not self.thresholds:
            raise ConfigError("average_over averages the probability of thresholded classes: set a threshold too")
        if self.scl is not None and self.scl not in SCL_MODES:
            raise ConfigError(f"scl merge must be one of {', '.join(SCL_MODES)}, got {self.scl!r}")

    # ---------------------------------------------------------------------------------- construction
    @classmethod
    def from_options(cls, options: PostProcess | Mapping[str, Any] | None = None,
                     defaults: Mapping[str, Any] | None = None, **overrides: Any) -> PostProcess:
        """Options from a card's defaults (``postprocess`` in the card), a mapping, and keyword overrides.

        ``threshold`` (a number) is the threshold of cloud; ``buffer`` is ``buffer_m``. ``None``
        values leave the default.
        """
        merged: dict[str, Any] = {}
        for layer in (defaults or {}, options.as_dict() if isinstance(options, PostProcess) else options or {},
                      overrides):
            for k, v in dict(layer).items():
                if v is None:
                    continue
                if k == "threshold":
                    rest = {k2: v2 for k2, v2 in merged.get("thresholds", {}).items() if k2 != "cloud"}
                    merged["thresholds"] = {"cloud": float(v), **rest}  # cloud first: it wins ties
                elif k == "buffer":
                    merged["buffer_m"] = v
                elif k == "thresholds":
                    merged["thresholds"] = {**merged.get("thresholds", {}), **dict(v)}
                else:
                    merged[k] = v
        known = {"thresholds", "average_over", "dilation_size", "buffer_m", "min_region", "scl", "resolution"}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ConfigError(f"unknown post-processing option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
        if isinstance(merged.get("buffer_m"), int | float):
            v = float(merged["buffer_m"])
            merged["buffer_m"] = {"cloud": v, "shadow": v}
        return cls(**merged)

    def with_resolution(self, resolution: float) -> PostProcess:
        return replace(self, resolution=float(resolution))

    # ---------------------------------------------------------------------------------- views
    @property
    def active(self) -> bool:
        return bool(self.thresholds or self.dilation_size or self.buffer_m or self.min_region or self.scl)

    @property
    def needs_probabilities(self) -> bool:
        return bool(self.thresholds)

    def buffer_px(self) -> dict[int, float]:
        """Buffer radius in pixels per class value (cloud then shadow)."""
        out: dict[int, float] = {}
        if self.buffer_m and self.resolution <= 0:
            raise ConfigError("a buffer in metres needs the mask resolution (metres per pixel)")
        cloud = max(float(self.dilation_size), self.buffer_m.get("cloud", 0.0) / self.resolution if
                    self.buffer_m.get("cloud") else 0.0)
        if cloud > 0:
            out[CLOUD] = cloud
        if self.buffer_m.get("shadow"):
            out[SHADOW] = self.buffer_m["shadow"] / self.resolution
        return out

    @property
    def halo(self) -> int:
        """Rows of context above and below needed to post-process a row exactly."""
        buf = max(self.buffer_px().values(), default=0.0)
        return int(self.average_over) + int(self.min_region) + int(math.ceil(buf))

    def as_dict(self) -> dict[str, Any]:
        """Only the options that are set (for the STAC item's processing fields)."""
        d: dict[str, Any] = {}
        if self.thresholds:
            d["thresholds"] = dict(self.thresholds)
        for k in ("average_over", "dilation_size", "min_region"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.buffer_m:
            d["buffer_m"] = dict(self.buffer_m)
        if self.scl:
            d["scl"] = self.scl
        return d

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.as_dict().items()) or "none"

    # ---------------------------------------------------------------------------------- the work
    def apply(self, classes: np.ndarray, probabilities: np.ndarray | None = None,
              provider: np.ndarray | None = None, *, top: bool = True, bottom: bool = True) -> np.ndarray:
        """Post-process a whole mask (or a window of one) and return the new classes.

        ``probabilities`` (``(K, H, W)``, uint8 percent or float 0–1) are needed for thresholds;
        ``provider`` is the SCL on the same grid. ``top``/``bottom`` say whether the window's first/last
        row is the scene's edge (else regions touching it are treated as large: see :class:`PostProcessSink`).
        """
        out = np.array(classes, dtype=np.uint8, copy=True)
        nodata = out == NODATA
        n_classes = 0 if probabilities is None else probabilities.shape[0]
        if self.thresholds:
            if probabilities is None:
                raise ConfigError("probability thresholds need the class probabilities")
            out = self._threshold(out, probabilities)
            out[nodata] = NODATA
        if self.min_region:
            out = self._remove_small(out, top, bottom)
        for value, radius in self.buffer_px().items():
            grown = ndimage.binary_dilation(_is(out, value), structure=disk(radius), border_value=0)
            out[grown & (out == CLEAR)] = value
        if self.scl is not None and provider is not None:
            out = self._merge(out, np.asarray(provider), max(n_classes, int(out[~nodata].max(initial=0)) + 1))
        out[nodata] = NODATA
        return out

    def _threshold(self, classes: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        p = np.asarray(probabilities, np.float32)
        if probabilities.dtype == np.uint8:
            p = p / 100.0
        th = {class_value(k): v for k, v in self.thresholds.items()}
        for v in th:
            if v >= p.shape[0]:
                raise ConfigError(f"threshold on class {v} but the model gives {p.shape[0]} class probabilities")
        if self.average_over:
            kernel = disk(self.average_over).astype(np.float32)
            kernel /= kernel.sum()
            p = p.copy()
            for v in th:
                p[v] = ndimage.correlate(p[v], kernel, mode="reflect")
        out = classes.copy()
        demote = np.zeros(out.shape, bool)
        for v, t in th.items():
            demote |= (out == v) & ~(p[v] > t)
        if demote.any():
            others = p.copy()
            for v in th:
                others[v] = -1.0
            out[demote] = np.argmax(others[:, demote], axis=0).astype(np.uint8)
        for v, t in reversed(list(th.items())):
            out[p[v] > t] = v
        return out

    def _remove_small(self, classes: np.ndarray, top: bool, bottom: bool) -> np.ndarray:
        out = classes
        eight = np.ones((3, 3), bool)
        for value in np.unique(classes):
            if value in (CLEAR, NODATA):
                continue
            labels, n = ndimage.label(classes == value, structure=eight)
            if not n:
                continue
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            small = sizes < self.min_region
            small[0] = False
            # a region touching a window edge that is not the scene's edge continues beyond it
            if not top:
                small[np.unique(labels[0])] = False
            if not bottom:
                small[np.unique(labels[-1])] = False
            out[small[labels]] = CLEAR
        return out

    def _merge(self, classes: np.ndarray, scl: np.ndarray, n_classes: int) -> np.ndarray:
        out = classes
        has_thin, has_snow = n_classes > THIN_CLOUD, n_classes > SNOW
        if self.scl == "fill":
            clear = out == CLEAR
            out[clear & np.isin(scl, (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH))] = CLOUD
            out[clear & (scl == SCL_CIRRUS)] = THIN_CLOUD if has_thin else CLOUD
            out[clear & (scl == SCL_SHADOW)] = SHADOW
            if has_snow:
                out[clear & (scl == SCL_SNOW)] = SNOW
        else:
            flagged = np.isin(out, (CLOUD, SHADOW, THIN_CLOUD))
            out[flagged & np.isin(scl, SCL_CLEAR)] = CLEAR
            out[flagged & (scl == SCL_SNOW)] = SNOW if has_snow else CLEAR
        return out


def _is(classes: np.ndarray, value: int) -> np.ndarray:
    if value == CLOUD:
        return np.isin(classes, (CLOUD, THIN_CLOUD))
    return classes == value


class PostProcessSink:
    """A :class:`~cloudmask.engine.io.MaskSink` that post-processes streamed row blocks, then forwards them.

    Holds at most ``2 * halo`` rows plus the rows waiting to be written (classes, probabilities and,
    with ``provider``, the SCL rows), whatever the scene size. ``height``/``width`` are the mask's;
    ``forward_probabilities=False`` drops the probabilities it needed for thresholds before the inner
    sink sees them. After the last row arrives everything has been forwarded (no ``close`` needed).
    """

    def __init__(self, inner: Any, options: PostProcess, height: int, width: int, *,
                 provider: ProviderRows | None = None, forward_probabilities: bool = True,
                 min_rows: int = 64) -> None:
        self.inner, self.options, self.height, self.width = inner, options, height, width
        self.provider = provider
        self.forward = forward_probabilities
        self.halo = options.halo
        self.min_rows = max(1, min_rows)
        self.lo = 0  # scene row of buffer row 0
        self.next_out = 0  # first row not yet forwarded
        self.cls = np.empty((0, width), np.uint8)
        self.probs: np.ndarray | None = None
        self.scl: np.ndarray | None = None

    @property
    def hi(self) -> int:
        return self.lo + self.cls.shape[0]

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        if row != self.hi:
            raise ValueError(f"post-processing expects blocks top to bottom: got row {row}, expected {self.hi}")
        self.cls = np.concatenate([self.cls, classes.astype(np.uint8, copy=False)], axis=0)
        if probabilities is not None:
            self.probs = probabilities if self.probs is None else np.concatenate([self.probs, probabilities], axis=1)
        elif self.options.needs_probabilities:
            raise ValueError("probability thresholds need the engine's probabilities (StreamConfig.probabilities)")
        if self.provider is not None:
            new = np.asarray(self.provider(row, row + classes.shape[0]), np.uint8)
            self.scl = new if self.scl is None else np.concatenate([self.scl, new], axis=0)
        done = self.hi >= self.height
        ready = self.height if done else self.hi - self.halo
        if ready - self.next_out >= self.min_rows or (done and ready > self.next_out):
            self._flush(ready)

    def _flush(self, stop: int) -> None:
        a = self.next_out
        w0 = max(self.lo, a - self.halo)
        w1 = self.hi
        s = slice(w0 - self.lo, w1 - self.lo)
        probs = None if self.probs is None else self.probs[:, s]
        scl = None if self.scl is None else self.scl[s]
        out = self.options.apply(self.cls[s], probs, scl, top=w0 == 0, bottom=w1 >= self.height)
        k0, k1 = a - w0, stop - w0
        fwd = None
        if self.forward and probs is not None:
            fwd = probs[:, k0:k1].copy()
            fwd[:, out[k0:k1] == NODATA] = 0
        self.inner.write_block(a, np.ascontiguousarray(out[k0:k1]), fwd)
        self.next_out = stop
        keep_from = max(self.lo, stop - self.halo) - self.lo  # rows a later window still needs
        self.cls = self.cls[keep_from:]
        if self.probs is not None:
            self.probs = self.probs[:, keep_from:]
        if self.scl is not None:
            self.scl = self.scl[keep_from:]
        self.lo += keep_from


def postprocess_array(classes: np.ndarray, probabilities: np.ndarray | None, options: PostProcess,
                      provider: np.ndarray | None = None) -> np.ndarray:
    """Post-process a whole in-memory mask (the reference the streamed form must equal)."""
    return options.apply(classes, probabilities, provider)


def parse_thresholds(values: Sequence[str] | None) -> dict[str, float]:
    """``["cloud=0.4", "shadow=0.5"]`` (CLI/job form) as ``{class: probability}``."""
    out: dict[str, float] = {}
    for item in values or ():
        name, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"threshold {item!r}: write CLASS=PROBABILITY, e.g. cloud=0.4")
        try:
            out[canonical(name)] = float(value)
        except ValueError as err:
            raise ConfigError(f"threshold {item!r}: {err}") from err
    return out


__all__ = [
    "SCL_MODES", "PostProcess", "PostProcessSink", "ProviderRows", "disk", "for_card", "parse_thresholds",
    "postprocess_array",
]


def for_card(card: Any, options: PostProcess | Mapping[str, Any] | None = None, resolution: float | None = None,
             **overrides: Any) -> PostProcess:
    """The post-processing of a model: its card's defaults (``postprocess`` in the card), then ``options``
    and keyword overrides (``threshold``, ``buffer``, ...); ``resolution`` (metres per mask pixel)
    defaults to the card's."""
    defaults = card.extra.get("postprocess") if hasattr(card, "extra") else None
    post = PostProcess.from_options(options, defaults=defaults if isinstance(defaults, Mapping) else None,
                                    **overrides)
    res = resolution if resolution is not None else float(getattr(card, "resolution", 0.0) or 0.0)
    if getattr(card, "kind", "") == "patch-classifier" and resolution is None:
        res *= float(card.patch_size)
    return post.with_resolution(res)


class SclRows:
    """Reads rows of a scene's SCL asset onto a mask grid (nearest neighbour: SCL is categorical).

    ``href`` is the SCL asset (any GDAL path), ``geobox`` the mask's odc-geo GeoBox, ``env`` the GDAL
    options of the scene's reader (:meth:`cloudmask.reader.RasterSource.gdal_env`: a provider's endpoint and
    credentials, the HTTP limits), applied to the open and every read. Pixels outside the asset read as 0
    (SCL "no data"). Call :meth:`close` (or use as a context manager) when done.
    """

    def __init__(self, href: str, geobox: Any, env: Mapping[str, Any] | None = None) -> None:
        from .reader import gdal_path

        self.geobox = geobox
        self.env = dict(env or {})
        try:
            with rasterio.Env(**self.env):
                self.ds = rasterio.open(gdal_path(href))
        except rasterio.RasterioIOError as err:
            raise ReadError(f"cannot open the SCL asset {href} for the provider-mask merge: {err}; "
                            "run without --scl or check the item's assets") from err

    def __call__(self, start: int, stop: int) -> np.ndarray:
        gb = self.geobox
        out = np.zeros((stop - start, gb.width), np.uint8)
        dst_transform = gb.transform @ gb.transform.translation(0, start)
        with rasterio.Env(**self.env):
            reproject(source=rasterio.band(self.ds, 1), destination=out, dst_transform=dst_transform,
                      dst_crs=str(gb.crs), resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
        return out

    def close(self) -> None:
        self.ds.close()

    def __enter__(self) -> SclRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

