"""The physics of the synthetic scenes: land-cover spectra, clouds, shadows, noise and the truth.

Fields are generated at 20 m (smooth value noise) and resampled to 10 m / 60 m band by band, so a full
10,980 x 10,980 tile stays fast and memory-lean. Reflectances are L2A surface reflectance (0-1); DN
carry the processing-baseline >= 04.00 offset (``DN = reflectance * 10000 + 1000``).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Truth value of pixels without data.
TRUTH_NODATA = 255
DN_OFFSET = 1000  # processing baseline >= 04.00: DN = reflectance * 10000 + 1000
VISIBLE_CLOUD = 0.15  # cloud opacity above which a (thin) cloud is "cloud" in the truth
SHADOW_TRUTH = 0.5  # shadow strength above which a pixel is "shadow" in the truth
CLOUD_HEIGHT_M = 1000.0  # cloud-top height used for the shadow displacement, metres


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 band as Earth Search names it."""

    key: str  # asset key (STAC common name, rededge1-3 for B05-B07)
    name: str  # band id / file stem, e.g. B04
    common_name: str  # eo:bands common_name (Earth Search uses "rededge" for B05-B07)
    title: str
    center_wavelength: float  # micrometres
    fwhm: float  # micrometres
    resolution: int  # metres


#: Bands in Earth Search asset order.
BANDS: tuple[Band, ...] = (
    Band("red", "B04", "red", "Red - 10m", 0.665, 0.038, 10),
    Band("green", "B03", "green", "Green - 10m", 0.56, 0.045, 10),
    Band("blue", "B02", "blue", "Blue - 10m", 0.49, 0.098, 10),
    Band("nir", "B08", "nir", "NIR 1 - 10m", 0.842, 0.145, 10),
    Band("swir22", "B12", "swir22", "SWIR 2.2\u03bcm - 20m", 2.19, 0.242, 20),
    Band("rededge2", "B06", "rededge", "Red Edge 2 - 20m", 0.74, 0.018, 20),
    Band("rededge3", "B07", "rededge", "Red Edge 3 - 20m", 0.783, 0.028, 20),
    Band("rededge1", "B05", "rededge", "Red Edge 1 - 20m", 0.704, 0.019, 20),
    Band("swir16", "B11", "swir16", "SWIR 1.6\u03bcm - 20m", 1.61, 0.143, 20),
    Band("nir08", "B8A", "nir08", "NIR 2 - 20m", 0.865, 0.033, 20),
    Band("coastal", "B01", "coastal", "Coastal - 60m", 0.443, 0.027, 60),
    Band("nir09", "B09", "nir09", "NIR 3 - 60m", 0.945, 0.026, 60),
)

# L2A surface reflectance (0-1) per band id of each land cover, and of a thick cloud top.
_SPECTRUM_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_REFLECTANCE: dict[str, tuple[float, ...]] = {
    #              B01    B02    B03    B04    B05    B06    B07    B08    B8A    B09    B11    B12
    "vegetation": (0.025, 0.035, 0.075, 0.040, 0.115, 0.290, 0.360, 0.380, 0.400, 0.390, 0.210, 0.105),
    "soil":       (0.070, 0.090, 0.140, 0.190, 0.220, 0.240, 0.260, 0.280, 0.290, 0.295, 0.340, 0.290),
    "water":      (0.050, 0.055, 0.050, 0.030, 0.022, 0.016, 0.013, 0.011, 0.010, 0.008, 0.005, 0.004),
    "urban":      (0.100, 0.110, 0.125, 0.140, 0.150, 0.160, 0.170, 0.180, 0.185, 0.190, 0.210, 0.190),
    "cloud":      (0.780, 0.770, 0.765, 0.760, 0.760, 0.755, 0.750, 0.745, 0.740, 0.700, 0.560, 0.430),
}
_SPECTRA: dict[str, dict[str, float]] = {
    cover: dict(zip(_SPECTRUM_BANDS, values, strict=True)) for cover, values in _REFLECTANCE.items()
}
_COVERS = ("vegetation", "soil", "water", "urban")


# ------------------------------------------------------------------------------------------- fields


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent generator per purpose, so fields do not depend on generation order."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _lerp_axis(n_out: int, n_in: int, scale: float, shift: float, smooth: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights to sample ``n_out`` points at input positions ``i * scale + shift``."""
    pos = np.arange(n_out, dtype=np.float64) * scale + shift
    pos = np.clip(pos, 0.0, n_in - 1.0)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (pos - i0).astype(np.float32)
    if smooth:
        w = w * w * (3.0 - 2.0 * w)
    return i0, i1, w


def _resample(a: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
              cols: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Separable linear resampling of a 2-D float32 array (rows first, then columns)."""
    r0, r1, wr = rows
    c0, c1, wc = cols
    t = a[r0] * (1.0 - wr)[:, None]
    t += a[r1] * wr[:, None]
    out = t[:, c0] * (1.0 - wc)
    out += t[:, c1] * wc
    return out


def _value_noise(shape: tuple[int, int], pixel: float, scales: Sequence[float], rng: np.random.Generator,
                 decay: float = 0.55) -> np.ndarray:
    """Fractal value noise (float32, ~zero mean, ~unit std) on a grid of ``pixel``-metre cells.

    ``scales`` are the feature sizes in metres, largest first; each octave's amplitude is ``decay``
    times the previous one.
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for s in scales:
        cells = s / pixel  # output pixels per noise cell
        nh, nw = int(h / cells) + 3, int(w / cells) + 3
        coarse = rng.standard_normal((nh, nw), dtype=np.float32)
        off_r, off_c = rng.random(2) * 0.99  # random phase, keeps octaves from sharing nodes
        rows = _lerp_axis(h, nh, 1.0 / cells, 1.0 + off_r + 0.5 / cells, smooth=True)
        cols = _lerp_axis(w, nw, 1.0 / cells, 1.0 + off_c + 0.5 / cells, smooth=True)
        layer = _resample(coarse, rows, cols)
        layer *= amp
        out += layer
        total += amp * amp
        amp *= decay
    out /= np.float32(math.sqrt(total) * 0.6)  # smoothstep interpolation shrinks the std to ~0.6
    return out


def _shift(a: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``a`` moved by ``dr`` rows and ``dc`` columns; uncovered cells are 0."""
    out = np.zeros_like(a)
    h, w = a.shape
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src_r = slice(max(0, -dr), h - max(0, dr))
    dst_r = slice(max(0, dr), h - max(0, -dr))
    src_c = slice(max(0, -dc), w - max(0, dc))
    dst_c = slice(max(0, dc), w - max(0, -dc))
    out[dst_r, dst_c] = a[src_r, src_c]
    return out


def _threshold_for(field: np.ndarray, fraction: float, mask: np.ndarray | None = None) -> float:
    """Value above which ``fraction`` of ``field`` (where ``mask``) lies, from a 1/9 subsample."""
    sub = field[::3, ::3]
    if mask is not None:
        sub = sub[mask[::3, ::3]]
    if sub.size == 0 or fraction <= 0.0:
        return float("inf")
    if fraction >= 1.0:
        return -float("inf")
    return float(np.quantile(sub, 1.0 - fraction))


@dataclass
class Fields:
    """Everything of a scene at 20 m except noise; float32 arrays of ``(size/2, size/2)``."""

    size: int  # 10 m pixels
    cover: dict[str, np.ndarray]  # land cover fractions (sum to 1)
    texture: np.ndarray  # surface brightness multiplier (~0.85-1.15)
    alpha: np.ndarray  # cloud opacity 0-1
    cloud_bright: np.ndarray  # cloud brightness multiplier (~0.85-1.05)
    shadow: np.ndarray  # shadow strength 0-1
    shadow_dark: np.ndarray  # surface factor in full shadow (0.25-0.45)

    @classmethod
    def generate(cls, size: int, seed: int, sun_azimuth: float, sun_elevation: float,
                 cloud_cover: float) -> Fields:
        n = size // 2
        shape = (n, n)
        extent = size * 10.0

        def scales(*metres: float) -> list[float]:
            return [min(m, extent / 2) for m in metres]

        land = scales(12000, 4000, 1500, 500, 160)
        # land cover: soft competition of four noise fields, water as distinct lakes/rivers
        logits = {}
        for k, name in enumerate(_COVERS):
            f = _value_noise(shape, 20.0, land, _rng(seed, f"cover-{name}"))
            bias = (0.4, 0.0, -1.1, -0.6)[k]  # vegetation most common, water least
            f += np.float32(bias)
            f *= np.float32(4.0 if name == "water" else 2.5)
            logits[name] = f
        m = np.maximum.reduce([logits[c] for c in _COVERS])
        total = np.zeros(shape, np.float32)
        for c in _COVERS:
            logits[c] -= m
            np.exp(logits[c], out=logits[c])
            total += logits[c]
        for c in _COVERS:
            logits[c] /= total
        del m, total
        texture = _value_noise(shape, 20.0, scales(800, 200, 60), _rng(seed, "texture"))
        texture *= np.float32(0.07)
        texture += np.float32(1.0)

        # clouds: a thick layer (sharp edges) and a thin, diffuse layer (max opacity ~0.5)
        thick_f = _value_noise(shape, 20.0, scales(6000, 2500, 900, 300, 100), _rng(seed, "cloud-thick"))
        thin_f = _value_noise(shape, 20.0, scales(8000, 3000, 1000, 300), _rng(seed, "cloud-thin"))
        w_thick, w_thin, thin_max = 0.35, 1.2, 0.5
        thin_frac = 0.3 * cloud_cover
        # thin-layer opacity > VISIBLE_CLOUD where thin_f > t_thin + w_thin * VISIBLE_CLOUD / thin_max
        t_thin = _threshold_for(thin_f, thin_frac) - w_thin * VISIBLE_CLOUD / thin_max
        alpha_thin = np.clip((thin_f - np.float32(t_thin)) / np.float32(w_thin), 0, 1, dtype=np.float32)
        alpha_thin *= np.float32(thin_max)
        del thin_f
        thin_visible = alpha_thin > VISIBLE_CLOUD
        rest = (cloud_cover - thin_frac) / max(1e-9, 1.0 - thin_frac)
        t_thick = _threshold_for(thick_f, rest, ~thin_visible) - w_thick * VISIBLE_CLOUD
        del thin_visible
        alpha = np.clip((thick_f - np.float32(t_thick)) / np.float32(w_thick), 0, 1, dtype=np.float32)
        del thick_f
        # union of the two layers: 1 - (1 - a)(1 - b)
        alpha = 1.0 - (1.0 - alpha) * (1.0 - alpha_thin)
        del alpha_thin
        cloud_bright = _value_noise(shape, 20.0, scales(1500, 400, 120), _rng(seed, "cloud-bright"))
        cloud_bright *= np.float32(0.05)
        cloud_bright += np.float32(0.97)

        # shadows: the cloud footprint moved away from the sun by height / tan(elevation)
        dist = min(2500.0, CLOUD_HEIGHT_M / math.tan(math.radians(max(sun_elevation, 15.0))))
        az = math.radians(sun_azimuth)
        dc = int(round(-math.sin(az) * dist / 20.0))  # east is +column; shadow points away from the sun
        dr = int(round(math.cos(az) * dist / 20.0))  # north is -row
        moved = _shift(alpha, dr, dc)
        shadow = np.clip((moved - np.float32(0.25)) / np.float32(0.3), 0, 1, dtype=np.float32)
        del moved
        shadow_dark = _value_noise(shape, 20.0, scales(3000, 800), _rng(seed, "shadow-dark"))
        shadow_dark *= np.float32(0.04)
        shadow_dark += np.float32(0.35)
        np.clip(shadow_dark, 0.25, 0.45, out=shadow_dark)
        log.debug("sample fields: shadow offset %d, %d px at 20 m (%.0f m)", dr, dc, dist)
        return cls(size, logits, texture, alpha.astype(np.float32, copy=False), cloud_bright, shadow, shadow_dark)

    def reflectance20(self, band: str) -> np.ndarray:
        """Top-of-canopy-plus-cloud reflectance of ``band`` at 20 m (float32, no noise)."""
        surf = np.zeros_like(self.alpha)
        for c in _COVERS:
            surf += self.cover[c] * np.float32(_SPECTRA[c][band])
        surf *= self.texture
        # shadow: surface * (1 - (1 - dark) * strength)
        shade = 1.0 - self.shadow_dark
        shade *= self.shadow
        np.subtract(1.0, shade, out=shade)
        surf *= shade
        del shade
        # cloud mixing: (1 - alpha) * surface + alpha * cloud
        cloud = self.cloud_bright * np.float32(_SPECTRA["cloud"][band])
        cloud -= surf
        cloud *= self.alpha
        surf += cloud
        return surf


# ------------------------------------------------------------------------------------------- pixels


def _wedge_mask(h: int, w: int, rows: slice, fraction: float) -> np.ndarray:
    """Nodata pixels (True) of rows ``rows`` of an ``h`` x ``w`` grid: a wedge at the left edge.

    Nodata where the pixel centre's ``x / width < p - q * y / height``, which covers ``fraction`` of
    the tile: a triangle (top width ``2 * fraction``) up to 0.5, a trapezoid beyond.
    """
    r = np.arange(rows.start, rows.stop, dtype=np.float64)
    if fraction <= 0.0:
        return np.zeros((len(r), w), bool)
    p, q = (2 * fraction, 2 * fraction) if fraction <= 0.5 else (1.0, 2 * (1 - fraction))
    limit = (p - q * (r + 0.5) / h) * w  # columns (centre x in pixels) left of this are nodata
    c = np.arange(w, dtype=np.float64) + 0.5
    return c[None, :] < limit[:, None]


def _row_chunks(n: int, step: int = 1024) -> Iterator[slice]:
    for r in range(0, n, step):
        yield slice(r, min(n, r + step))


def _to_dn(refl: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 DN (x10000 + 1000, clipped to 1-65535), 0 where ``nodata``."""
    refl *= np.float32(10000.0)
    refl += np.float32(DN_OFFSET)
    np.rint(refl, out=refl)
    np.clip(refl, 1, 65535, out=refl)
    dn = refl.astype(np.uint16)
    dn[nodata] = 0
    return dn


def _add_noise(refl: np.ndarray, rng: np.random.Generator) -> None:
    """A little sensor noise: sd 0.002 + 1 % of the signal (reflectance units), in place."""
    noise = rng.standard_normal(refl.shape, dtype=np.float32)
    sd = refl * np.float32(0.01)
    sd += np.float32(0.002)
    noise *= sd
    refl += noise


def band_dn(fields: Fields, band: Band, seed: int, nodata_wedge: float) -> np.ndarray:
    """uint16 DN of ``band`` at its native resolution."""
    rng = _rng(seed, f"noise-{band.name}")
    r20 = fields.reflectance20(band.name)
    n20 = r20.shape[0]
    if band.resolution == 20:
        _add_noise(r20, rng)
        return _to_dn(r20, _wedge_mask(n20, n20, slice(0, n20), nodata_wedge))
    if band.resolution == 60:
        n60 = n20 // 3
        r60 = r20.reshape(n60, 3, n60, 3).mean(axis=(1, 3), dtype=np.float32)
        del r20
        _add_noise(r60, rng)
        return _to_dn(r60, _wedge_mask(n60, n60, slice(0, n60), nodata_wedge))
    # 10 m: bilinear upsampling of the 20 m field, chunk by chunk
    n10 = fields.size
    out = np.empty((n10, n10), np.uint16)
    cols = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    for rows in _row_chunks(n10):
        r10 = _resample(r20, _sub_axis(n10, n20, rows), cols)
        _add_noise(r10, rng)
        out[rows] = _to_dn(r10, _wedge_mask(n10, n10, rows, nodata_wedge))
    return out


def _sub_axis(n10: int, n20: int, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolation indices/weights of 10 m rows ``rows`` on the 20 m grid."""
    i0, i1, w = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    return i0[rows], i1[rows], w[rows]


def truth_mask(fields: Fields, nodata_wedge: float) -> np.ndarray:
    """Truth at 10 m: 0 clear, 1 cloud (opacity > VISIBLE_CLOUD), 2 shadow, 255 nodata."""
    n10 = fields.size
    n20 = n10 // 2
    out = np.empty((n10, n10), np.uint8)
    cols = _lerp_axis(n10, n20, 0.5, -0.25, smooth=False)
    for rows in _row_chunks(n10):
        ax = _sub_axis(n10, n20, rows)
        alpha = _resample(fields.alpha, ax, cols)
        shadow = _resample(fields.shadow, ax, cols)
        t = np.where(alpha > VISIBLE_CLOUD, np.uint8(1), np.where(shadow > SHADOW_TRUTH, np.uint8(2), np.uint8(0)))
        t[_wedge_mask(n10, n10, rows, nodata_wedge)] = TRUTH_NODATA
        out[rows] = t
    return out


def scl_map(fields: Fields, nodata_wedge: float) -> np.ndarray:
    """A Sen2Cor-like scene classification at 20 m (0 nodata, 3 shadow, 4 veg, 5 bare, 6 water,
    8/9 medium/high-probability cloud, 10 thin cirrus)."""
    cover = np.stack([fields.cover[c] for c in _COVERS]).argmax(axis=0)
    scl = np.array([4, 5, 6, 5], np.uint8)[cover]
    del cover
    scl[fields.shadow > SHADOW_TRUTH] = 3
    a = fields.alpha
    scl[(a > VISIBLE_CLOUD) & (a <= 0.35)] = 10
    scl[(a > 0.35) & (a <= 0.7)] = 8
    scl[a > 0.7] = 9
    n = scl.shape[0]
    scl[_wedge_mask(n, n, slice(0, n), nodata_wedge)] = 0
    return scl
