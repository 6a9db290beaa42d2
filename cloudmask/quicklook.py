"""Pictures and numbers: true-colour quicklooks with the mask overlaid, class fractions, comparisons.

Reflectance is shown with a fixed stretch (0–0.3 reflectance -> 0–1, gamma 1/1.6) so scenes compare
with each other. Masks are drawn as translucent class colours with outlines (the colours of the
mask contract, :mod:`cloudmask.classes`, which the COG colour table uses too: cloud yellow, shadow
magenta, thin cloud sky blue, snow teal, clear green, nodata dark grey) and a legend, beside the
image, giving each class's share of the valid pixels.

The class table of a mask is given (``classes=``) or read from the values it holds: a mask with a
value 3 has the thin-cloud class, one with at most 2 the three-class contract.

Functions that write files build their figure without pyplot (no backend switch, thread-safe: the CLI
and job runner call them from worker threads); functions that return a figure for a notebook use
pyplot so Jupyter displays it inline. Inputs may be numpy arrays or xarray objects: ``rgb`` is
``(3, H, W)`` reflectance, a Dataset with ``red``/``green``/``blue`` variables, or a DataArray with a
``band`` dimension holding them; ``mask`` is an ``(H, W)`` uint8 array or DataArray.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from . import atomic
from .classes import MASK_CLASSES, NODATA, NODATA_CLASS, THREE_CLASSES, ClassTable
from .errors import CloudmaskError
from .layout import OutputPaths
from .reader import RasterSource

if TYPE_CHECKING:
    from .pipeline import MaskResult
    from .scene import SceneSpec

log = logging.getLogger(__name__)

#: RGBA overlay colours (0–1) per mask value (classes with opacity > 0, and nodata): the mask contract's
#: colours (:attr:`cloudmask.classes.MaskClass.colour`, the COG colour table's too).
OVERLAY: dict[int, tuple[float, float, float, float]] = {
    c.value: (*c.rgb, c.alpha) for c in (*MASK_CLASSES, NODATA_CLASS) if c.alpha > 0
}
#: Solid colours of the classes in bar plots and difference maps (the same palette).
CLASS_COLOURS: dict[str, tuple[float, float, float]] = {c.name: c.rgb for c in (*MASK_CLASSES, NODATA_CLASS)}
#: Fixed display stretch: reflectance at which the display saturates, and gamma.
MAX_REFLECTANCE = 0.3
GAMMA = 1.6


# ------------------------------------------------------------------------------------------- inputs


def table_of(mask: Any, classes: ClassTable | None = None) -> ClassTable:
    """The class table of ``mask``: ``classes`` if given, else from the DataArray's ``flag_values``/
    ``flag_meanings`` attrs, else the values it holds (at least the three-class contract)."""
    if classes is not None:
        return classes
    attrs = getattr(mask, "attrs", {})
    if "flag_values" in attrs and "flag_meanings" in attrs:
        return ClassTable.from_mapping(dict(zip(attrs["flag_values"], str(attrs["flag_meanings"]).split(), strict=True)))
    m = as_mask(mask)
    valid = m[m != NODATA]
    top = int(valid.max()) if valid.size else 0
    if top < len(THREE_CLASSES):
        return THREE_CLASSES
    if top >= len(MASK_CLASSES):
        raise ValueError(f"mask value {top} is no class of the mask contract (0-{len(MASK_CLASSES) - 1}, {NODATA})")
    return ClassTable(MASK_CLASSES[: top + 1])


def as_mask(mask: Any) -> np.ndarray:
    """An ``(H, W)`` uint8 numpy mask from a numpy array or a DataArray (a ``mask`` Dataset works too)."""
    if hasattr(mask, "data_vars") and "mask" in mask.data_vars:
        mask = mask["mask"]
    arr = np.asarray(getattr(mask, "values", mask))
    if arr.ndim != 2:
        raise ValueError(f"a mask is 2-D (rows, cols), got shape {arr.shape}")
    return arr.astype(np.uint8, copy=False)


def as_rgb(rgb: Any) -> np.ndarray:
    """``(3, H, W)`` float reflectance (red, green, blue) from an array, a Dataset or a ``band`` DataArray."""
    if hasattr(rgb, "data_vars"):  # Dataset of band variables
        missing = [b for b in ("red", "green", "blue") if b not in rgb.data_vars]
        if missing:
            raise ValueError(f"the Dataset lacks band variable(s) {missing} for a true-colour picture")
        return np.stack([np.asarray(rgb[b].values, np.float32) for b in ("red", "green", "blue")])
    if hasattr(rgb, "dims") and "band" in rgb.dims:
        sel = rgb.sel(band=["red", "green", "blue"]) if rgb["band"].dtype.kind in "UO" else rgb
        sel = sel.transpose("band", ...)
        return np.asarray(sel.values, np.float32)
    arr = np.asarray(getattr(rgb, "values", rgb), np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"rgb must be (3, H, W) reflectance (red, green, blue), got shape {arr.shape}")
    return arr


def true_colour(rgb: Any, max_reflectance: float = MAX_REFLECTANCE, gamma: float = GAMMA) -> np.ndarray:
    """``(3, H, W)`` reflectance (NaN = nodata) -> ``(H, W, 3)`` float 0–1 for display."""
    x = np.nan_to_num(np.clip(as_rgb(rgb) / max_reflectance, 0.0, 1.0), nan=0.0) ** (1.0 / gamma)
    return np.moveaxis(x, 0, -1)


def overlay(rgb: np.ndarray, mask: Any) -> np.ndarray:
    """Blend the class colours of ``mask`` (H, W) over a display image ``rgb`` (H, W, 3)."""
    m = as_mask(mask)
    out = np.array(rgb, dtype=np.float64, copy=True)
    for value, (r, g, b, a) in OVERLAY.items():
        sel = m == value
        out[sel] = (1 - a) * out[sel] + a * np.array([r, g, b])
    return out


# ------------------------------------------------------------------------------------------ numbers


def class_fractions(mask: Any, where: Any = None, classes: ClassTable | None = None) -> dict[str, float]:
    """Class shares of ``mask``: each class (``clear``, ``cloud``, ``shadow``, ... of its table, see
    :func:`table_of`) in percent of the *valid* pixels and ``nodata`` in percent of all pixels considered.

    ``where`` (boolean ``(H, W)`` array or DataArray, e.g. an AOI rasterised on the mask's grid)
    restricts the count to those pixels. Without valid pixels the class shares are 0.
    """
    table = table_of(mask, classes)
    m = as_mask(mask)
    if where is not None:
        sel = np.asarray(getattr(where, "values", where), dtype=bool)
        if sel.shape != m.shape:
            raise ValueError(f"where has shape {sel.shape} but the mask has {m.shape}")
        m = m[sel]
    return table.shares(table.histogram(m)).fractions()


def fractions_table(masks: Mapping[str, Any], where: Any = None, digits: int = 2,
                    classes: ClassTable | None = None) -> list[dict[str, Any]]:
    """One row per named mask: ``{"name", "clear", "cloud", "shadow", ..., "nodata"}`` (percent, rounded).

    All rows have the columns of the widest class table among the masks.
    """
    tables = {name: table_of(mask, classes) for name, mask in masks.items()}
    widest = max(tables.values(), key=len, default=THREE_CLASSES)
    rows = []
    for name, mask in masks.items():
        fr = class_fractions(mask, where, widest)
        rows.append({"name": str(name), **{k: round(v, digits) for k, v in fr.items()}})
    return rows


def mask_agreement(a: Any, b: Any, classes: ClassTable | None = None) -> dict[str, Any]:
    """How two masks agree on pixels valid in both: ``agreement`` (percent), ``valid_pixels`` and the
    ``confusion`` matrix (rows: classes of ``a``, columns: classes of ``b``, pixel counts) over the
    wider of their class tables."""
    ma, mb = as_mask(a), as_mask(b)
    if ma.shape != mb.shape:
        raise ValueError(f"masks differ in shape: {ma.shape} vs {mb.shape}")
    table = classes or max(table_of(a), table_of(b), key=len)
    n = len(table)
    valid = (ma < n) & (mb < n)
    conf = np.bincount(ma[valid].astype(np.int64) * n + mb[valid], minlength=n * n).reshape(n, n)
    total = int(valid.sum())
    agree = 100.0 * np.trace(conf) / total if total else float("nan")
    return {"agreement": float(agree), "valid_pixels": total, "classes": list(table.names),
            "confusion": conf.tolist()}


# ------------------------------------------------------------------------------------------ drawing


def _figure(figsize: tuple[float, float], ncols: int = 1, interactive: bool = True) -> tuple[Any, Any]:
    """A figure and its axes: through pyplot for notebooks, a bare Agg figure for files."""
    if interactive:
        import matplotlib.pyplot as plt

        return plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)


def legend_labels(mask: Any, classes: ClassTable | None = None) -> list[tuple[int, str]]:
    """``(value, label)`` of the legend entries of ``mask``: overlaid classes, then clear, then nodata."""
    table = table_of(mask, classes)
    fr = class_fractions(mask, classes=table)
    entries = [c for c in table.classes if c.alpha > 0] + [c for c in table.classes if c.alpha == 0]
    out = []
    for c in (*entries, NODATA_CLASS):
        label = f"{c.name.replace('_', ' ')} {fr[c.name]:.1f} %" + (" of scene" if c.value == NODATA else "")
        out.append((c.value, label))
    return out


def _legend(ax: Any, mask: np.ndarray, classes: ClassTable | None = None) -> None:
    """The legend below the image (never over it: it would hide part of the mask)."""
    from matplotlib.patches import Patch

    handles = []
    for value, label in legend_labels(mask, classes):
        c = NODATA_CLASS if value == NODATA else next(k for k in MASK_CLASSES if k.value == value)
        handles.append(Patch(facecolor=c.rgb, edgecolor="k", label=label))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(3, len(handles)),
              fontsize=8, frameon=False, title="% of valid pixels", title_fontsize=7)


def _outline(ax: Any, mask: np.ndarray) -> None:
    """Thin outlines around the overlaid classes (so thin features stay visible)."""
    if mask.shape[0] < 2 or mask.shape[1] < 2:
        return
    for value in (v for v in OVERLAY if v != NODATA):
        sel = (mask == value).astype(np.float32)
        if 0 < sel.sum() < sel.size:
            ax.contour(sel, levels=[0.5], colors=[OVERLAY[value][:3]], linewidths=0.6)


def plot_mask(rgb: Any, mask: Any, title: str = "", ax: Any = None, legend: bool = True,
              classes: ClassTable | None = None) -> Any:
    """Draw true colour with the mask overlaid (outlines + legend) on ``ax`` (new figure if None); returns ax."""
    m = as_mask(mask)
    if ax is None:
        _, axes = _figure((7, 7))
        ax = axes[0, 0]
    ax.imshow(overlay(true_colour(rgb), m), interpolation="nearest")
    _outline(ax, m)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    if legend:
        _legend(ax, m, classes=table_of(mask, classes))
    return ax


def plot_true_colour(rgb: Any, title: str = "", ax: Any = None) -> Any:
    """Draw true colour only (fixed stretch) on ``ax``; returns ax."""
    if ax is None:
        _, axes = _figure((7, 7))
        ax = axes[0, 0]
    ax.imshow(true_colour(rgb), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def plot_scene(rgb: Any, mask: Any, title: str = "", path: Path | None = None) -> Any:
    """Two panels: true colour, and true colour with the mask; written to ``path`` when given. Returns fig."""
    m = as_mask(mask)
    h, w = m.shape
    panel = 6.0
    fig, axes = _figure((2 * panel, panel * h / w + 1.0), ncols=2, interactive=path is None)  # + legend below
    plot_true_colour(rgb, "true colour", axes[0, 0])
    plot_mask(rgb, m, "mask", axes[0, 1])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        _save(fig, Path(path))
    return fig


def plot_fractions(fractions: Any, ax: Any = None, title: str = "class fractions") -> Any:
    """Horizontal stacked bars of class shares (percent of valid pixels), one bar per mask.

    ``fractions`` is one :func:`class_fractions` dict, a mapping name -> such dict, or
    :func:`fractions_table` rows. The nodata share is written beside each bar. Returns the axes.
    """
    rows = _fraction_rows(fractions)
    present = [c.value for c in MASK_CLASSES if any(c.name in r for r in rows)]
    table = ClassTable(MASK_CLASSES[: max(present, default=2) + 1])
    if ax is None:
        _, axes = _figure((7, 1.3 + 0.45 * len(rows)))
        ax = axes[0, 0]
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for cls in table.names:
        vals = np.array([float(r.get(cls) or 0.0) for r in rows])
        ax.barh(y, vals, left=left, color=CLASS_COLOURS[cls], edgecolor="k", linewidth=0.4, label=cls)
        for yi, (lo, v) in enumerate(zip(left, vals, strict=True)):
            if v >= 6:
                ax.text(lo + v / 2, yi, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if cls == "shadow" else "black")
        left += vals
    for yi, r in enumerate(rows):
        if float(r.get("nodata", 0.0)) > 0:
            ax.text(101, yi, f"nodata {float(r['nodata']):.0f} %", va="center", fontsize=7)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of valid pixels")
    ax.set_title(title, fontsize=9, loc="right")
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False)
    return ax


def _fraction_rows(fractions: Any) -> list[dict[str, Any]]:
    if isinstance(fractions, Mapping) and all(k in fractions for k in THREE_CLASSES.names):
        return [{"name": "", **fractions}]
    if isinstance(fractions, Mapping):
        return [{"name": str(k), **v} for k, v in fractions.items()]
    return [dict(r) for r in fractions]


def compare_masks(a: Any, b: Any, rgb: Any = None, titles: tuple[str, str] = ("A", "B"),
                  path: Path | None = None) -> Any:
    """Side by side: mask ``a``, mask ``b`` and where they differ (agreement in the title). Returns fig.

    In the difference panel each disagreeing pixel is coloured by the class ``b`` gives it (cloud
    yellow, shadow magenta, clear green); agreeing pixels are dimmed true colour (or grey).
    """
    from matplotlib.patches import Patch

    ma, mb = as_mask(a), as_mask(b)
    h, w = ma.shape
    panel = 5.0
    fig, axes = _figure((3 * panel, panel * h / w + 1.0), ncols=3, interactive=path is None)  # + legends below
    base = true_colour(rgb) if rgb is not None else np.full((h, w, 3), 0.5)
    table = max(table_of(a), table_of(b), key=len)
    for ax, m, t in zip(axes[0, :2], (ma, mb), titles, strict=True):
        ax.imshow(overlay(base, m), interpolation="nearest")
        _outline(ax, m)
        ax.set_title(t, fontsize=9)
        ax.set_axis_off()
        _legend(ax, m, classes=table)
    stats = mask_agreement(ma, mb, table)
    valid = (ma != NODATA) & (mb != NODATA)
    diff = (ma != mb) & valid
    img = 0.35 + 0.4 * base.mean(axis=2, keepdims=True).repeat(3, axis=2)
    img[~valid] = CLASS_COLOURS["nodata"]
    for value, name in table.mapping.items():
        img[diff & (mb == value)] = CLASS_COLOURS[name]
    axes[0, 2].imshow(img, interpolation="nearest")
    axes[0, 2].set_title(f"differences: {100 - stats['agreement']:.2f} % of valid pixels "
                         f"(agreement {stats['agreement']:.2f} %)", fontsize=9)
    axes[0, 2].set_axis_off()
    handles = [Patch(facecolor=CLASS_COLOURS[n], edgecolor="k", label=f"{titles[1]} says {n}")
               for n in table.names]
    axes[0, 2].legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=min(3, len(handles)),
                      fontsize=8, frameon=False)
    fig.tight_layout()
    if path is not None:
        _save(fig, Path(path))
    return fig


def _save(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically (temp file + rename) and release it."""
    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.1)  # no empty margins
    finally:
        if fig.canvas.manager is not None:  # a pyplot figure: close it so it does not pile up
            import matplotlib.pyplot as plt

            plt.close(fig)
    return path


def save_quicklook(rgb: Any, mask: Any, path: Path, title: str = "", classes: ClassTable | None = None) -> Path:
    """Write a PNG of true colour beside true colour with the mask overlaid, with a legend (atomic)."""
    m = as_mask(mask)
    h, w = m.shape
    panel = min(8.0, max(3.5, 8.0 * max(h, w) / 1024))
    # the images fill about 3/4 of each panel's width (margins, gap); below them the legend
    fig, axes = _figure((2 * panel, 0.75 * panel * h / w + 1.2), ncols=2, interactive=False)
    plot_true_colour(rgb, "true colour", axes[0, 0])
    plot_mask(rgb, m, "cloud mask", axes[0, 1], classes=table_of(m, classes))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path), dpi=110)


def save_thumbnail(rgb: Any, mask: Any, path: Path, max_pixels: int = 256) -> Path:
    """Write a small PNG (longest side <= ``max_pixels``) of true colour with the mask overlaid (atomic).

    No axes, legend or title: the STAC ``thumbnail`` a catalogue browser shows beside the item.
    """
    import matplotlib.image as mpimg

    m = as_mask(mask)
    step = max(1, math.ceil(max(m.shape) / max_pixels))
    img = overlay(true_colour(rgb), m)[::step, ::step]
    with atomic.atomic_path(path) as tmp:
        mpimg.imsave(tmp, np.clip(img, 0.0, 1.0), format="png")
    return Path(path)


def read_rgb(spec: SceneSpec, resolution: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``(3, H, W)`` red/green/blue reflectance of ``spec`` on its grid at ``resolution`` metres."""
    geobox = spec.geobox(resolution)
    src = RasterSource(spec, ("red", "green", "blue"), geobox)
    try:
        rgb = src.read_rows(0, geobox.height)
    finally:
        src.close()
    if shape is not None:
        rgb = rgb[:, : shape[0], : shape[1]]
    return rgb


def available() -> bool:
    """Whether quicklooks can be drawn (matplotlib, the ``viz`` extra, is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def quicklook_for_result(spec: SceneSpec, result: MaskResult, max_pixels: int = 1024) -> Path | None:
    """Quicklook PNG beside ``result.mask`` (STAC ``overview``) and a small thumbnail (STAC
    ``thumbnail``): RGB read from the scene at the mask's grid (decimated). Returns the quicklook,
    or None (with a warning) when matplotlib is not installed."""
    if not available():
        log.warning("quicklooks need matplotlib: pip install 's2-cloudmask[viz]'; masks are written without them")
        return None

    with rasterio.open(result.mask) as ds:
        factor = max(1, math.ceil(max(ds.height, ds.width) / max_pixels))
        h, w = math.ceil(ds.height / factor), math.ceil(ds.width / factor)
        mask = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        res = abs(ds.transform.a) * factor
    rgb = read_rgb(spec, res, (h, w))
    paths = OutputPaths.of_mask(result.mask)
    mask = mask[: rgb.shape[1], : rgb.shape[2]]
    save_thumbnail(rgb, mask, paths.thumbnail)
    return save_quicklook(rgb, mask, paths.quicklook, f"{spec.id} — {result.model}", classes=result.classes)


def quicklook_or_note(spec: SceneSpec, result: MaskResult) -> Path | None:
    """The quicklook policy of every batch (``run``, ``demo``, ``job run``, :func:`cloudmask.mask_scene`).

    A quicklook that cannot be written (full disk, unwritable place) fails the scene
    (:class:`~cloudmask.errors.WriteError`: it is not done, the next run makes it); one that cannot be drawn
    from this scene is left out with a warning and ``result.extra["quicklook_error"]`` (recorded in the item).
    """
    from .errors import WriteError

    try:
        path = quicklook_for_result(spec, result)
    except WriteError:
        raise
    except OSError as err:
        raise atomic.write_error(err, OutputPaths.of_mask(result.mask).quicklook) from err
    except Exception as err:  # noqa: BLE001 - a quicklook this scene cannot have: done without it, said so
        text = str(err) if isinstance(err, CloudmaskError) else f"{type(err).__name__}: {err}"
        log.warning("no quicklook for %s: %s", spec.id, text)
        result.extra["quicklook_error"] = text
        return None
    result.extra["quicklook"] = path
    return path


__all__ = [
    "CLASS_COLOURS",
    "OVERLAY",
    "as_mask",
    "quicklook_or_note",
    "as_rgb",
    "class_fractions",
    "compare_masks",
    "fractions_table",
    "legend_labels",
    "mask_agreement",
    "overlay",
    "plot_fractions",
    "plot_mask",
    "plot_scene",
    "plot_true_colour",
    "quicklook_for_result",
    "read_rgb",
    "save_quicklook",
    "save_thumbnail",
    "table_of",
    "true_colour",
]
