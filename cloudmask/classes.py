"""The mask contract: class values and names, nodata, colours, and the counts -> percentages math.

Every cloudmask mask is a uint8 raster whose values are classes of this table::

    0 clear   1 cloud (thick)   2 shadow   3 thin_cloud   4 snow (snow/ice)   255 nodata

A model card names the class of each output channel (several channels may name one class; their
probabilities add up). The classes a mask can hold are those of its :class:`ClassTable`: values
``0 .. max`` of the classes the card names, so a three-class model writes ``0, 1, 2`` and a
thick/thin/shadow/clear model writes ``0, 1, 2, 3``; the probability COG has one band per value.
``collapse`` folds a table to the three-class contract (thin cloud -> cloud, snow -> clear) for
tools that expect it (``--classes cloud-shadow``).

Percentages have one basis everywhere: a class's share is a percentage of the *valid* pixels,
``nodata`` is a percentage of *all* pixels. A mask without valid pixels has no class shares
(``None``), never 0 %.

Everything that writes or draws a mask (COG colour table and category names, STAC
``classification:classes``, quicklook legend, summaries, ``predict`` attrs) reads this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigError

#: Mask value for pixels without valid input.
NODATA: int = 255

CLEAR, CLOUD, SHADOW, THIN_CLOUD, SNOW = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class MaskClass:
    """One mask class.

    ``colour`` (RGB 0-255) is its one colour everywhere: the COG colour table (what QGIS shows), STAC
    ``color_hint``, and the pictures (quicklook overlay, outlines, legends, bars), where it is drawn
    over true colour with opacity ``alpha`` (0: not overlaid, e.g. clear). The colours are chosen to
    stand out both as a map and over true colour (cloud yellow, not white on white clouds).
    """

    value: int
    name: str
    title: str
    description: str
    colour: tuple[int, int, int]
    alpha: float

    @property
    def rgb(self) -> tuple[float, float, float]:
        """``colour`` as RGB 0-1 (matplotlib)."""
        r, g, b = self.colour
        return r / 255.0, g / 255.0, b / 255.0

    @property
    def color_hint(self) -> str:
        """``colour`` as the 6-digit hex STAC classification wants (``"FFFFFF"``)."""
        return "".join(f"{c:02X}" for c in self.colour)


#: Every class a mask may hold, by value (the values are fixed: a mask means the same everywhere).
MASK_CLASSES: tuple[MaskClass, ...] = (
    MaskClass(CLEAR, "clear", "Clear", "clear land or water", (64, 166, 77), 0.0),
    MaskClass(CLOUD, "cloud", "Cloud", "cloud (thick cloud where thin cloud is a class of its own)",
              (255, 204, 0), 0.5),
    MaskClass(SHADOW, "shadow", "Cloud shadow", "cloud shadow", (191, 0, 191), 0.5),
    MaskClass(THIN_CLOUD, "thin_cloud", "Thin cloud", "thin (semi-transparent) cloud, haze, cirrus",
              (51, 191, 255), 0.45),
    MaskClass(SNOW, "snow", "Snow/ice", "snow or ice", (0, 230, 153), 0.45),
)
#: The nodata entry (not a class: no share of valid pixels); transparent in the COG colour table.
NODATA_CLASS = MaskClass(NODATA, "nodata", "No data", "no valid input", (38, 38, 38), 1.0)

_BY_NAME = {c.name: c for c in MASK_CLASSES}
#: Other spellings accepted in model cards (lower case, ``-`` and spaces read as ``_``).
ALIASES: dict[str, str] = {
    "thick_cloud": "cloud", "thick": "cloud", "cloud_shadow": "shadow", "thin": "thin_cloud",
    "haze": "thin_cloud", "cirrus": "thin_cloud", "snow_ice": "snow", "snow/ice": "snow", "ice": "snow",
}
#: How ``collapse`` folds classes onto the three-class contract.
COLLAPSE: dict[str, str] = {"thin_cloud": "cloud", "snow": "clear"}
ClassMode = Literal["all", "cloud-shadow"]
CLASS_MODES: tuple[str, ...] = ("all", "cloud-shadow")


def class_names() -> tuple[str, ...]:
    """Names a card may give an output channel (besides the :data:`ALIASES`)."""
    return tuple(_BY_NAME)


def canonical(name: str) -> str:
    """The contract name of a class name or alias (``"Thick cloud"`` -> ``"cloud"``).

    Raises ``ValueError`` naming the allowed names when ``name`` is none of them.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in _BY_NAME:
        raise ValueError(
            f"unknown class {name!r}: use one of {', '.join(_BY_NAME)} "
            f"(aliases: {', '.join(sorted(ALIASES))})"
        )
    return key


def class_value(name: str) -> int:
    """Mask value of a class name or alias."""
    return _BY_NAME[canonical(name)].value


@dataclass(frozen=True)
class ClassTable:
    """The classes one mask can hold: values ``0 .. n-1`` in order, plus :data:`NODATA`."""

    classes: tuple[MaskClass, ...]

    def __post_init__(self) -> None:
        if not self.classes or [c.value for c in self.classes] != list(range(len(self.classes))):
            raise ValueError("a class table holds the classes 0 .. n-1 in order")

    @classmethod
    def for_names(cls, names: Iterable[str]) -> ClassTable:
        """The table for classes named by a card's channels: every class up to the highest value named."""
        values = [class_value(n) for n in names]
        if not values:
            raise ValueError("a class table needs at least one class name")
        return cls(MASK_CLASSES[: max(values) + 1])

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, str] | Mapping[str, str]) -> ClassTable:
        """The table from ``{value: name}`` (e.g. a COG's or DataArray's class attrs)."""
        by_value = {int(k): canonical(v) for k, v in mapping.items() if int(k) != NODATA}
        for v, n in by_value.items():
            if _BY_NAME[n].value != v:
                raise ValueError(f"class {n!r} has value {_BY_NAME[n].value} in the mask contract, not {v}")
        return cls.for_names(by_value.values())

    # ---- views

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def values(self) -> tuple[int, ...]:
        return tuple(c.value for c in self.classes)

    @property
    def mapping(self) -> dict[int, str]:
        """``{value: name}`` of the classes (nodata not included)."""
        return {c.value: c.name for c in self.classes}

    @property
    def with_nodata(self) -> tuple[MaskClass, ...]:
        """The classes then the nodata entry."""
        return (*self.classes, NODATA_CLASS)

    def __getitem__(self, key: int | str) -> MaskClass:
        """A class by value or name (``NODATA``/``"nodata"`` give the nodata entry)."""
        if key in (NODATA, "nodata"):
            return NODATA_CLASS
        if isinstance(key, str):
            c = _BY_NAME[canonical(key)]
            if c.value < len(self.classes):
                return c
        elif 0 <= int(key) < len(self.classes):
            return self.classes[int(key)]
        raise KeyError(f"{key!r} is not a class of this table ({', '.join(self.names)})")

    def summary(self) -> str:
        """``"0=clear,1=cloud,2=shadow,255=nodata"``: the class table as one tag value."""
        return ",".join(f"{c.value}={c.name}" for c in self.with_nodata)

    # ---- writers' forms

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table (RGBA 0-255) by value; nodata transparent."""
        cmap = {c.value: (*c.colour, 255) for c in self.classes}
        cmap[NODATA] = (0, 0, 0, 0)
        return cmap

    def category_names(self) -> list[str]:
        """GDAL category names: entry ``i`` names value ``i`` (``""`` for unused values, up to nodata)."""
        names = [""] * (NODATA + 1)
        for c in self.classes:
            names[c.value] = c.name
        names[NODATA] = NODATA_CLASS.name
        return names

    def band_description(self) -> str:
        """Band description of a mask: ``"cloudmask classes: 0 clear, 1 cloud, 2 shadow, 255 nodata"``."""
        return "cloudmask classes: " + ", ".join(f"{c.value} {c.name}" for c in self.with_nodata)

    def cf_attrs(self) -> dict[str, Any]:
        """CF flag attributes of a mask DataArray: ``flag_values``, ``flag_meanings``, ``classes`` (the summary)."""
        return {"flag_values": list(self.values), "flag_meanings": " ".join(self.names), "classes": self.summary()}

    @classmethod
    def from_summary(cls, summary: str) -> ClassTable:
        """The table from :meth:`summary` text (a COG's ``CLOUDMASK_CLASSES`` tag)."""
        try:
            pairs = dict(kv.split("=", 1) for kv in summary.split(","))
            return cls.from_mapping({int(k): v for k, v in pairs.items()})
        except ValueError as err:
            raise ValueError(f"not a class table summary {summary!r} (e.g. '0=clear,1=cloud,255=nodata'): {err}") from err

    def stac_classes(self, shares: ClassShares | None = None) -> list[dict[str, Any]]:
        """STAC classification v2 ``classification:classes`` (with ``count``/``percentage`` from ``shares``).

        ``percentage`` is of the valid pixels for classes and of all pixels for nodata; it is left out
        of the classes when there are no valid pixels.
        """
        out = []
        for c in self.with_nodata:
            d: dict[str, Any] = {"value": c.value, "name": c.name, "title": c.title,
                                 "description": c.description, "color_hint": c.color_hint}
            if c.value == NODATA:
                d["nodata"] = True
            if shares is not None:
                d["count"] = shares.count(c.name)
                pct = shares.percentages.get(c.name)
                if pct is not None:
                    d["percentage"] = round(pct, 3)
            out.append(d)
        return out

    def collapse(self) -> tuple[ClassTable, np.ndarray]:
        """The three-class table and a 256-entry uint8 lookup taking this table's values onto it."""
        lut = np.arange(256, dtype=np.uint8)
        for c in self.classes:
            lut[c.value] = _BY_NAME[COLLAPSE.get(c.name, c.name)].value
        return THREE_CLASSES, lut

    # ---- numbers

    def histogram(self, mask: np.ndarray) -> np.ndarray:
        """256-bin pixel counts of a uint8 mask (index = value); see :func:`histogram`."""
        return histogram(mask)

    def shares(self, counts: np.ndarray | Sequence[int]) -> ClassShares:
        """Class counts and percentages from a 256-bin histogram of a mask.

        Pixels of values outside the table (other than nodata) are refused: a mask and its table
        must agree.
        """
        hist = np.asarray(counts, np.int64)
        if hist.shape != (256,):
            raise ValueError(f"counts must be a 256-bin histogram, got shape {hist.shape}")
        stray = [int(v) for v in np.flatnonzero(hist) if v >= len(self.classes) and v != NODATA]
        if stray:
            raise ValueError(f"mask values {stray} are not classes of this table ({self.summary()})")
        return ClassShares(self, {c.name: int(hist[c.value]) for c in self.with_nodata})


@dataclass(frozen=True)
class ClassShares:
    """Pixel counts per class of a mask (``nodata`` included) and the percentages they give."""

    table: ClassTable
    counts: Mapping[str, int]

    def count(self, name: str) -> int:
        return int(self.counts.get(name, 0))

    @property
    def total(self) -> int:
        """All pixels counted."""
        return int(sum(self.counts.values()))

    @property
    def valid(self) -> int:
        """Pixels with a class (not nodata)."""
        return self.total - self.count("nodata")

    @property
    def percentages(self) -> dict[str, float | None]:
        """Each class in percent of the valid pixels (``None`` without valid pixels); ``nodata`` in
        percent of all pixels (``None`` when nothing was counted)."""
        valid, total = self.valid, self.total
        out: dict[str, float | None] = {
            c.name: (100.0 * self.count(c.name) / valid if valid else None) for c in self.table.classes
        }
        out["nodata"] = 100.0 * self.count("nodata") / total if total else None
        return out

    def fractions(self) -> dict[str, float]:
        """:attr:`percentages` with ``0.0`` for the undefined ones (for tables and plots)."""
        return {k: (0.0 if v is None else float(v)) for k, v in self.percentages.items()}

    @property
    def cloud_cover(self) -> float | None:
        """``eo:cloud_cover``: cloud and thin cloud in percent of the valid pixels (``None`` without)."""
        if not self.valid:
            return None
        cloudy = self.count("cloud") + self.count("thin_cloud")
        return 100.0 * cloudy / self.valid


#: The three-class contract (``--classes cloud-shadow``) and the default table.
THREE_CLASSES = ClassTable(MASK_CLASSES[:3])
#: ``{value: name}`` of the three-class contract (kept for ``from cloudmask.models import CLASSES``).
CLASSES: dict[int, str] = THREE_CLASSES.mapping


def histogram(mask: np.ndarray) -> np.ndarray:
    """256-bin pixel counts (int64) of a uint8 mask or mask block (index = value); counts add up over blocks.

    Counts the contract's values one pass each, clear, cloud and nodata first, until every pixel is
    counted (``np.bincount`` casts every pixel to int64 first: about 2x slower on a 10 m tile's blocks);
    any other value falls back to the full count.
    """
    flat = np.asarray(mask, np.uint8).ravel()
    out = np.zeros(256, np.int64)
    seen = 0
    values = [c.value for c in MASK_CLASSES]
    for value in (*values[:2], NODATA, *values[2:]):  # clear, cloud, nodata first: most masks stop there
        out[value] = np.count_nonzero(flat == value)
        seen += int(out[value])
        if seen == flat.size:
            return out
    return np.bincount(flat, minlength=256).astype(np.int64, copy=False)  # values outside the contract


def collapse_names(names: Iterable[str], mode: str = "all") -> tuple[str, ...]:
    """Channel class names under a ``--classes`` mode: ``all`` keeps them, ``cloud-shadow`` folds
    thin cloud into cloud and snow into clear."""
    if mode not in CLASS_MODES:
        raise ConfigError(f"unknown classes mode {mode!r}: use one of {', '.join(CLASS_MODES)}")
    out = tuple(canonical(n) for n in names)
    if mode == "cloud-shadow":
        out = tuple(COLLAPSE.get(n, n) for n in out)
    return out


def fractions_from_counts(counts: np.ndarray | Sequence[int], table: ClassTable = THREE_CLASSES) -> dict[str, float]:
    """Percentages from a 256-bin histogram: classes of the valid pixels, ``nodata`` of all pixels
    (0.0 where undefined; use :meth:`ClassTable.shares` to tell "no valid pixels" apart)."""
    return table.shares(counts).fractions()


__all__ = [
    "ALIASES",
    "CLASSES",
    "CLASS_MODES",
    "CLEAR",
    "CLOUD",
    "COLLAPSE",
    "MASK_CLASSES",
    "NODATA",
    "NODATA_CLASS",
    "SHADOW",
    "SNOW",
    "THIN_CLOUD",
    "THREE_CLASSES",
    "ClassShares",
    "ClassTable",
    "MaskClass",
    "canonical",
    "class_names",
    "class_value",
    "collapse_names",
    "fractions_from_counts",
    "histogram",
]
