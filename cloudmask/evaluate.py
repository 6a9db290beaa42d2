"""Score a mask against a reference raster: per-class IoU, precision, recall, F1, overall accuracy.

The prediction is resampled with nearest neighbour onto the reference's grid (any CRS, any
resolution; :func:`rasterio.warp.reproject`), so a 30 m mask is scored on a 10 m label grid. Pixels
that are nodata in either raster, or outside the prediction, are excluded; so are reference values
that ``reference_classes`` does not name. Both rasters' values are mapped to class names (the mask
contract of :mod:`cloudmask.classes` for the prediction, its three classes clear/cloud/shadow for
the reference, by default). The classes scored are those the reference names and has pixels of;
a predicted class the reference does not have is folded onto it: ``thin_cloud`` counts as ``cloud``,
everything else (``shadow``, ``snow``) as ``clear`` -- so a two-class cloud/not-cloud reference
scores "cloud vs not". A class the mapping names but the reference holds no pixel of (``shadow`` of the
default mapping on a cloud/not-cloud raster; ``clear`` and ``cloud`` excepted) is *not in the
reference*: it is not scored (no IoU of 0 for a class nobody labelled) and is folded like a missing one;
:attr:`Scores.not_in_reference` lists it. Over several pairs, a class counts as absent only when it is
absent from every reference.

``boundary`` (pixels) ignores a band around reference class edges, as cloud benchmarks do: a pixel is
left out when its ``(2 N + 1)``-pixel square window holds more than one reference class.

Confusion matrices count pixels, rows are reference classes, columns predicted classes. Metrics of a
class with no pixel in either raster are undefined (``None``; ``null`` in JSON).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from rasterio.warp import Resampling, reproject
from scipy import ndimage

from .classes import MASK_CLASSES, NODATA, canonical, class_value
from .console import table
from .errors import ConfigError, GridError, ReadError
from .layout import output_stem
from .stac import search

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLASSES",
    "DEFAULT_REFERENCE_CLASSES",
    "Scores",
    "evaluate",
    "evaluate_many",
    "parse_classes",
    "score_arrays",
    "summary_rows",
]

#: ``{value: class name}`` of a cloudmask mask: the default of the prediction.
DEFAULT_CLASSES: dict[int, str] = {c.value: c.name for c in MASK_CLASSES}
#: The default of the reference: the three-class contract (0 clear, 1 cloud, 2 shadow).
DEFAULT_REFERENCE_CLASSES: dict[int, str] = {c.value: c.name for c in MASK_CLASSES[:3]}
#: Reference assets tried, in order, when the reference is a STAC catalogue.
REFERENCE_ASSETS = ("truth", "label", "labels", "reference", "ensemble")
_MASK_SUFFIX = "_cloudmask"
_FOLD = {"thin_cloud": "cloud"}
#: Classes scored even when the reference has no pixel of them (a cloud-free reference still scores cloud).
_ALWAYS_SCORED = ("clear", "cloud")


def parse_classes(text: str | Mapping[int, str] | None,
                  default: Mapping[int, str] = DEFAULT_CLASSES) -> dict[int, str]:
    """``"0=clear,1=cloud,4=cloud"`` -> ``{0: "clear", 1: "cloud", 4: "cloud"}`` (names as in
    :mod:`cloudmask.classes`, aliases allowed); ``None`` gives ``default``."""
    if text is None:
        return dict(default)
    items = text.items() if isinstance(text, Mapping) else _split_pairs(str(text))
    out: dict[int, str] = {}
    for value, name in items:
        try:
            v = int(value)
            out[v] = canonical(name)
        except ValueError as err:
            raise ConfigError(
                f"bad class mapping {value}={name}: write VALUE=NAME pairs like 0=clear,1=cloud,2=shadow "
                f"({err})"
            ) from err
        if not 0 <= v <= 65535:
            raise ConfigError(f"class value {v} out of range: raster values are 0..65535")
    if not out:
        raise ConfigError("empty class mapping: write VALUE=NAME pairs like 0=clear,1=cloud,2=shadow")
    return out


def _split_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" not in part:
            raise ConfigError(f"bad class mapping {part!r}: write VALUE=NAME pairs like 0=clear,1=cloud")
        value, name = part.split("=", 1)
        pairs.append((value.strip(), name.strip()))
    return pairs


@dataclass
class Scores:
    """A confusion matrix (pixels; rows reference, columns prediction) over ``classes`` and the metrics
    derived from it. Add two with ``+`` to pool them."""

    classes: tuple[str, ...]
    confusion: np.ndarray
    excluded_nodata: int = 0
    excluded_unlabelled: int = 0
    excluded_boundary: int = 0
    boundary: int = 0
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: classes the reference classes name but the reference has no pixel of: not scored (folded)
    not_in_reference: tuple[str, ...] = ()

    def __add__(self, other: Scores) -> Scores:
        if self.classes != other.classes:
            raise ConfigError(f"cannot pool scores over classes {self.classes} and {other.classes}")
        return Scores(self.classes, self.confusion + other.confusion,
                      self.excluded_nodata + other.excluded_nodata,
                      self.excluded_unlabelled + other.excluded_unlabelled,
                      self.excluded_boundary + other.excluded_boundary, self.boundary, "pooled",
                      not_in_reference=tuple(c for c in self.not_in_reference if c in other.not_in_reference))

    @property
    def pixels(self) -> int:
        """Pixels scored."""
        return int(self.confusion.sum())

    @property
    def overall_accuracy(self) -> float | None:
        """Share (0-1) of scored pixels whose class agrees."""
        n = self.pixels
        return float(np.trace(self.confusion)) / n if n else None

    def per_class(self) -> dict[str, dict[str, float | int | None]]:
        """``{class: {iou, precision, recall, f1, reference_pixels, predicted_pixels}}`` (metrics 0-1)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for k, name in enumerate(self.classes):
            tp = int(self.confusion[k, k])
            ref_n = int(self.confusion[k].sum())
            pred_n = int(self.confusion[:, k].sum())
            fp, fn = pred_n - tp, ref_n - tp
            out[name] = {
                "iou": _ratio(tp, tp + fp + fn),
                "precision": _ratio(tp, tp + fp),
                "recall": _ratio(tp, tp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                "reference_pixels": ref_n,
                "predicted_pixels": pred_n,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values."""
        d: dict[str, Any] = {
            "classes": list(self.classes),
            "per_class": self.per_class(),
            "overall_accuracy": self.overall_accuracy,
            "confusion_matrix": {"rows": "reference", "columns": "prediction",
                                 "counts": self.confusion.astype(int).tolist()},
            "pixels": self.pixels,
            "excluded": {"nodata": self.excluded_nodata, "unlabelled": self.excluded_unlabelled,
                         "boundary": self.excluded_boundary},
            "boundary_px": self.boundary,
            "not_in_reference": list(self.not_in_reference),
        }
        if self.not_in_reference:
            d["note"] = not_in_reference_note(self.not_in_reference)
        if self.name:
            d["name"] = self.name
        d.update(self.extra)
        return d

    def table(self) -> str:
        """Per-class metrics, overall accuracy and the confusion matrix as plain text."""
        rows: list[dict[str, Any]] = []
        for name, m in self.per_class().items():
            rows.append({"class": name, **{k: _pct(m[k]) for k in ("iou", "precision", "recall", "f1")},
                         "reference px": m["reference_pixels"], "predicted px": m["predicted_pixels"]})
        text = [table(rows, ["class", "iou", "precision", "recall", "f1", "reference px", "predicted px"])]
        text.append(f"\noverall accuracy {_pct(self.overall_accuracy)} % of {self.pixels} px "
                    f"(excluded: {self.excluded_nodata} nodata, {self.excluded_unlabelled} unlabelled, "
                    f"{self.excluded_boundary} within {self.boundary} px of a class edge)")
        cm = [{"reference \\ predicted": n, **{p: int(v) for p, v in zip(self.classes, row, strict=True)}}
              for n, row in zip(self.classes, self.confusion, strict=True)]
        text.append("\nconfusion matrix (pixels)\n" + table(cm, ["reference \\ predicted", *self.classes]))
        if self.not_in_reference:
            text.append("\n" + not_in_reference_note(self.not_in_reference))
        return "\n".join(text)


def not_in_reference_note(classes: Sequence[str]) -> str:
    """What a class the reference has no pixel of means for the scores."""
    folded = ", ".join(f"{c} as {_FOLD.get(c, 'clear')}" for c in classes)
    return (f"not in the reference: {', '.join(classes)} (the reference has no pixel of it): not scored; "
            f"predicted pixels of it count as the class the reference would use ({folded})")


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}"


def _lut(mapping: Mapping[int, str], classes: Sequence[str], fold: bool) -> np.ndarray:
    """65536-entry table: raster value -> index into ``classes`` (-1: not scored)."""
    lut = np.full(65536, -1, np.int16)
    index = {c: i for i, c in enumerate(classes)}
    for value, name in mapping.items():
        if fold and name not in index:
            name = _FOLD.get(name, "clear")
        if name in index:
            lut[value] = index[name]
    return lut


def score_arrays(
    prediction: np.ndarray,
    reference: np.ndarray,
    *,
    prediction_classes: Mapping[int, str] | str | None = None,
    reference_classes: Mapping[int, str] | str | None = None,
    prediction_nodata: float | None = NODATA,
    reference_nodata: float | None = None,
    valid: np.ndarray | None = None,
    boundary: int = 0,
    name: str = "",
    unscored: Iterable[str] | None = None,
) -> Scores:
    """Score two same-shape integer class arrays (already on one grid).

    ``valid`` (bool, optional) marks the pixels to consider; nodata values of either array and
    reference values missing from ``reference_classes`` are left out as well. ``unscored``: the classes
    not to score (folded); by default those the reference has no pixel of (``clear`` and ``cloud`` are
    always scored).
    """
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise GridError(f"prediction {pred.shape} and reference {ref.shape} differ in shape; resample first "
                        "(evaluate() does it from the files' georeferencing)")
    if boundary < 0:
        raise ConfigError(f"boundary must be >= 0 pixels, got {boundary}")
    ref_map = parse_classes(reference_classes, DEFAULT_REFERENCE_CLASSES)
    pred_map = parse_classes(prediction_classes)
    names = sorted(set(ref_map.values()), key=class_value)
    for arr, what in ((pred, "prediction"), (ref, "reference")):
        if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
            raise ConfigError(f"the {what} holds non-integer values: pass a class raster, not probabilities")
    ok = np.ones(ref.shape, bool) if valid is None else np.asarray(valid, bool).copy()
    if prediction_nodata is not None:
        ok &= pred != prediction_nodata
    if reference_nodata is not None:
        ok &= ref != reference_nodata
    excluded_nodata = int(ok.size - ok.sum())
    in_range = (ref >= 0) & (ref <= 65535) & (pred >= 0) & (pred <= 65535)
    ref_idx = np.clip(ref, 0, 65535).astype(np.int64)
    if unscored is None:
        labelled = _lut(ref_map, names, fold=False)[ref_idx[ok & in_range]]
        present = np.bincount(labelled[labelled >= 0], minlength=len(names)) > 0
        absent = [n for n, p in zip(names, present, strict=True) if not p and n not in _ALWAYS_SCORED]
    else:
        absent = [n for n in names if n in set(unscored)]
    classes = tuple(n for n in names if n not in absent)
    ref_i = np.where(ok & in_range, _lut(ref_map, classes, fold=False)[ref_idx], -1)
    pred_i = np.where(ok & in_range, _lut(pred_map, classes, fold=True)[np.clip(pred, 0, 65535).astype(np.int64)], -1)
    unlabelled = ok & (ref_i < 0)
    unknown_pred = ok & (ref_i >= 0) & (pred_i < 0)
    if unknown_pred.any():
        vals = np.unique(pred[unknown_pred])[:10].tolist()
        log.warning("%d predicted pixels have values %s that prediction_classes does not name; left out",
                    int(unknown_pred.sum()), vals)
    scored = ok & (ref_i >= 0) & (pred_i >= 0)
    excluded_boundary = 0
    if boundary > 0:
        edge = _edge_band(ref_i, len(classes), boundary)
        excluded_boundary = int((scored & edge).sum())
        scored &= ~edge
    k = len(classes)
    cm = np.bincount(ref_i[scored].astype(np.int64) * k + pred_i[scored], minlength=k * k).reshape(k, k)
    return Scores(classes, cm.astype(np.int64), excluded_nodata, int(unlabelled.sum() + unknown_pred.sum()),
                  excluded_boundary, boundary, name, not_in_reference=tuple(absent))


def _edge_band(ref_i: np.ndarray, n_classes: int, radius: int) -> np.ndarray:
    """True where the ``(2 radius + 1)`` square window around a pixel holds two or more reference classes."""
    size = 2 * radius + 1
    present = np.zeros(ref_i.shape, np.uint8)
    for k in range(n_classes):
        present += ndimage.maximum_filter(ref_i == k, size=size, mode="nearest").astype(np.uint8)
    return present > 1


# --------------------------------------------------------------------------------------------- files


def _open(path: str | Path, what: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise ReadError(f"cannot open the {what} raster {path}: {err}; check the path") from err


def read_pair(prediction: str | Path, reference: str | Path, *, band: int = 1, reference_band: int = 1
              ) -> tuple[np.ndarray, np.ndarray, float | None, float | None]:
    """The prediction resampled (nearest) onto the reference's grid, the reference, and their nodata.

    Pixels the prediction does not cover come back as its nodata (255 when it declares none).
    Rasters without georeferencing are compared pixel by pixel when their shapes agree.
    """
    with rasterio.Env(GDAL_PAM_ENABLED="NO"), _open(reference, "reference") as r, \
            _open(prediction, "prediction") as p:  # PAM off: reading must not leave .aux.xml files behind
        ref = r.read(reference_band)
        pred_nodata = p.nodata if p.nodata is not None else NODATA
        georef = r.crs is not None and p.crs is not None
        if not georef:
            if (p.height, p.width) != ref.shape:
                raise GridError(
                    f"{prediction if p.crs is None else reference} has no CRS and the shapes differ "
                    f"({p.height}x{p.width} vs {ref.shape[0]}x{ref.shape[1]}): georeference both rasters"
                )
            log.warning("%s or %s has no CRS: comparing pixel by pixel", prediction, reference)
            return p.read(band), ref, pred_nodata, r.nodata
        src = p.read(band)
        dst = np.full(ref.shape, pred_nodata, dtype=src.dtype)
        reproject(src, dst, src_transform=p.transform, src_crs=p.crs, dst_transform=r.transform,
                  dst_crs=r.crs, src_nodata=pred_nodata, dst_nodata=pred_nodata, resampling=Resampling.nearest)
        return dst, ref, pred_nodata, r.nodata


def evaluate(
    prediction: str | Path,
    reference: str | Path,
    *,
    prediction_classes: Mapping[int, str] | str | None = None,
    reference_classes: Mapping[int, str] | str | None = None,
    reference_nodata: float | None = None,
    boundary: int = 0,
    name: str = "",
    unscored: Iterable[str] | None = None,
) -> Scores:
    """Score the mask file ``prediction`` against the raster ``reference`` on the reference's grid.

    ``reference_nodata`` overrides the reference's declared nodata value; ``unscored`` as in
    :func:`score_arrays`.
    """
    pred, ref, pred_nodata, ref_nodata = read_pair(prediction, reference)
    scores = score_arrays(
        pred, ref, prediction_classes=prediction_classes, reference_classes=reference_classes,
        prediction_nodata=pred_nodata, reference_nodata=ref_nodata if reference_nodata is None else reference_nodata,
        boundary=boundary, name=name or Path(prediction).name, unscored=unscored,
    )
    scores.extra.update({"prediction": str(prediction), "reference": str(reference)})
    if scores.pixels == 0:
        log.warning("%s vs %s: no pixel to score (no overlap, or all nodata/unlabelled)", prediction, reference)
    return scores


# ---------------------------------------------------------------------------------------- many pairs


def _mask_key(path: Path) -> str:
    stem = path.name.split(".")[0]
    return stem[: -len(_MASK_SUFFIX)] if stem.endswith(_MASK_SUFFIX) else stem


def _references(reference: Path, asset: str | None) -> dict[str, Path]:
    """Reference rasters by key: item ids of a STAC catalogue, else file stems of a directory."""
    cat = reference if reference.is_file() else reference / "catalog.json"
    if cat.is_file() and cat.suffix == ".json":
        out: dict[str, Path] = {}
        for item in search(str(cat)):
            keys = [asset] if asset else list(REFERENCE_ASSETS)
            key = next((k for k in keys if k in item.assets), None)
            if key is None:
                log.info("item %s has no reference asset (%s); skipped", item.id, ", ".join(keys))
                continue
            href = item.assets[key].get_absolute_href() or item.assets[key].href
            out[output_stem(item.id)] = Path(href)
        if not out:
            raise ConfigError(f"no item of {cat} has a reference asset ({', '.join(keys)}); name one with "
                              "--reference-asset")
        return out
    if reference.is_dir():
        return {_mask_key(p): p for p in sorted(reference.iterdir()) if p.suffix.lower() in (".tif", ".tiff")}
    raise ConfigError(f"reference {reference} is neither a raster, a directory of rasters nor a STAC catalogue")


def evaluate_many(
    predictions: str | Path,
    reference: str | Path,
    *,
    reference_asset: str | None = None,
    **kw: Any,
) -> list[Scores]:
    """Score every mask in the directory ``predictions`` against its reference.

    ``reference`` is a STAC catalogue (``catalog.json`` or its directory; the reference is the item's
    ``reference_asset``, by default the first of :data:`REFERENCE_ASSETS` it has, paired by item id
    with ``<id>_cloudmask.tif``) or a directory of rasters paired by file stem (``X_cloudmask.tif`` with
    ``X.tif``). Pairs missing either side are logged and skipped.
    """
    pred_dir, ref = Path(predictions), Path(reference)
    if not pred_dir.is_dir():
        raise ConfigError(f"{pred_dir} is not a directory of masks")
    preds = {_mask_key(p): p for p in sorted(pred_dir.glob(f"*{_MASK_SUFFIX}.tif"))}
    if not preds:
        preds = {_mask_key(p): p for p in sorted(pred_dir.glob("*.tif"))}
    refs = _references(ref, reference_asset)
    keys = [k for k in preds if k in refs]
    for k in sorted(set(preds) ^ set(refs)):
        log.info("%s: %s", k, "no reference" if k in preds else "no prediction")
    if not keys:
        raise ConfigError(f"no mask in {pred_dir} pairs with a reference in {ref} (masks: "
                          f"{', '.join(sorted(preds)) or 'none'}; references: {', '.join(sorted(refs)) or 'none'})")
    results = [evaluate(preds[k], refs[k], name=k, **kw) for k in keys]
    # a class counts as "not in the reference" only when no reference of the set has it
    absent = set.intersection(*(set(r.not_in_reference) for r in results))
    return [r if set(r.not_in_reference) == absent else evaluate(preds[k], refs[k], name=k, unscored=absent, **kw)
            for k, r in zip(keys, results, strict=True)]


def summary_rows(results: Iterable[Scores]) -> list[dict[str, Any]]:
    """One row per pair (percent), then ``mean`` (of the pairs' metrics) and ``pooled`` (of all pixels)."""
    results = list(results)
    if not results:
        return []
    rows = [summary_rows_one(s, s.name) for s in results]
    mean: dict[str, Any] = {"name": "mean"}
    for col in [c for c in rows[0] if c not in ("name", "pixels")]:
        vals = [r[col] for r in rows if r[col] is not None]
        mean[col] = round(float(np.mean(vals)), 2) if vals else None
    mean["pixels"] = sum(r["pixels"] for r in rows)
    pooled_scores = results[0]
    for s in results[1:]:
        pooled_scores = pooled_scores + s
    pooled = summary_rows_one(pooled_scores, "pooled")
    return rows + [mean, pooled]


def summary_rows_one(s: Scores, name: str) -> dict[str, Any]:
    """The summary row of one :class:`Scores` (percent)."""
    pc = s.per_class()
    row: dict[str, Any] = {"name": name, "accuracy": _num(s.overall_accuracy)}
    for c in s.classes:
        row[f"{c} iou"] = _num(pc[c]["iou"])
        row[f"{c} f1"] = _num(pc[c]["f1"])
    row["pixels"] = s.pixels
    return row


def _num(v: float | int | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100.0 * float(v), 2)
