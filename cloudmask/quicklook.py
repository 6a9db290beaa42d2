"""Pictures: true-colour quicklooks with the mask overlaid, and side-by-side mask comparisons.

matplotlib with the Agg backend (no display needed). Reflectance is shown with a fixed stretch
(0–0.3 reflectance -> 0–255, gamma 1/1.6) so scenes compare with each other.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .models import CLASSES, NODATA

if TYPE_CHECKING:
    from .pipeline import MaskResult
    from .scene import SceneSpec

log = logging.getLogger(__name__)

#: RGBA overlay colours (0–1) per mask value.
OVERLAY: dict[int, tuple[float, float, float, float]] = {
    1: (1.0, 0.85, 0.0, 0.55),  # cloud: yellow
    2: (0.85, 0.0, 0.85, 0.55),  # shadow: magenta
    NODATA: (0.0, 0.0, 0.0, 1.0),
}
LABELS = {0: "clear", 1: "cloud", 2: "shadow", NODATA: "nodata"}


def true_colour(rgb: np.ndarray, max_reflectance: float = 0.3, gamma: float = 1.6) -> np.ndarray:
    """``(3, H, W)`` reflectance (NaN = nodata) -> ``(H, W, 3)`` float 0–1 for display."""
    x = np.nan_to_num(np.clip(rgb / max_reflectance, 0.0, 1.0), nan=0.0) ** (1.0 / gamma)
    return np.moveaxis(x, 0, -1)


def overlay(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the class colours of ``mask`` (H, W) over a display image ``rgb`` (H, W, 3)."""
    out = rgb.copy()
    for value, (r, g, b, a) in OVERLAY.items():
        sel = mask == value
        out[sel] = (1 - a) * out[sel] + a * np.array([r, g, b])
    return out


def _legend(ax: Any, mask: np.ndarray) -> None:
    from matplotlib.patches import Patch

    counts = np.bincount(mask.ravel(), minlength=256)
    valid = counts[: len(CLASSES)].sum()
    handles = []
    for value in (1, 2, 0, NODATA):
        share = 100.0 * counts[value] / (valid if value != NODATA else mask.size) if mask.size else 0.0
        colour = OVERLAY.get(value, (0.6, 0.6, 0.6, 0.0))
        face = colour[:3] if value in OVERLAY else (1, 1, 1)
        handles.append(Patch(facecolor=face, edgecolor="k", label=f"{LABELS[value]} {share:.1f} %"))
    ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.85)


def plot_mask(rgb: np.ndarray, mask: np.ndarray, title: str = "", ax: Any = None) -> Any:
    """Draw true colour (``(3, H, W)`` reflectance) with the mask overlaid and a legend; returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(overlay(true_colour(rgb), mask), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    _legend(ax, mask)
    return ax


def compare_masks(a: np.ndarray, b: np.ndarray, rgb: np.ndarray | None = None,
                  titles: tuple[str, str] = ("A", "B"), path: Path | None = None) -> Any:
    """Side by side: mask ``a``, mask ``b`` and where they differ (with agreement in the title)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    base = true_colour(rgb) if rgb is not None else np.full(a.shape + (3,), 0.5)
    for ax, m, t in zip(axes[:2], (a, b), titles, strict=True):
        ax.imshow(overlay(base, m), interpolation="nearest")
        ax.set_title(t, fontsize=9)
        ax.set_axis_off()
        _legend(ax, m)
    valid = (a != NODATA) & (b != NODATA)
    diff = (a != b) & valid
    agree = 100.0 * (1 - diff.sum() / max(1, valid.sum()))
    axes[2].imshow(diff, cmap="Reds", interpolation="nearest", vmin=0, vmax=1)
    axes[2].set_title(f"differences (agreement {agree:.2f} %)", fontsize=9)
    axes[2].set_axis_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def save_quicklook(rgb: np.ndarray, mask: np.ndarray, path: Path, title: str = "") -> Path:
    """Write a PNG of true colour with the mask overlaid and a legend (atomic)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    h, w = mask.shape
    scale = 8.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(max(3.0, w * scale), max(3.0, h * scale)))
    plot_mask(rgb, mask, title, ax)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def quicklook_for_result(spec: SceneSpec, result: MaskResult, max_pixels: int = 1024) -> Path:
    """Quicklook PNG beside ``result.mask``: RGB read from the scene at the mask's grid (decimated)."""
    import rasterio
    from rasterio.enums import Resampling

    from .pipeline import mask_paths
    from .reader import RasterSource

    with rasterio.open(result.mask) as ds:
        factor = max(1, math.ceil(max(ds.height, ds.width) / max_pixels))
        h, w = math.ceil(ds.height / factor), math.ceil(ds.width / factor)
        mask = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        res = abs(ds.transform.a) * factor
    geobox = spec.geobox(res)
    src = RasterSource(spec, ("red", "green", "blue"), geobox)
    try:
        rgb = src.read_rows(0, geobox.height)[:, :h, :w]
    finally:
        src.close()
    path = mask_paths(result.mask.parent, spec.id)["quicklook"]
    return save_quicklook(rgb, mask[: rgb.shape[1], : rgb.shape[2]], path, f"{spec.id} — {result.model}")
