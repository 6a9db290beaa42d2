"""The output layout: where one scene's mask, probabilities, quicklook and STAC item go.

``OUT/<stem>_cloudmask.tif``, ``OUT/<stem>_probabilities.tif``, ``OUT/<stem>_quicklook.png`` and
``OUT/items/<stem>.json``. The stem is the item id made safe as a file name; when making it safe
changed the id (``dup/a`` -> ``dup_a``), an 8-hex-digit hash of the original id is appended
(``dup_a-3d56665d``), so two ids never share a file name (``dup_a`` itself keeps its plain stem).
The stem is also the output item's id.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ItemLayoutError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MASK_SUFFIX = "_cloudmask.tif"
#: Longest stem (characters), hash suffix included.
MAX_STEM = 200


def safe_name(item_id: str) -> str:
    """A file name from an item id that cannot leave its directory (``../../x`` -> ``x``).

    Accents are folded to ASCII (``Sentinel-é`` -> ``Sentinel-e``); an id with no ASCII letter or digit
    left (``Ω``, ``雲マスク``) is named ``item`` (:func:`output_stem` adds a hash of the id). Not
    collision-free on its own (``dup/a`` and ``dup_a`` give ``dup_a``); use :func:`output_stem`.
    Raises :class:`ItemLayoutError` (that scene fails, the others go on) for an empty id.
    """
    if not isinstance(item_id, str) or not item_id:
        raise ItemLayoutError(f"item id {item_id!r} is empty; give the STAC item an id")
    folded = unicodedata.normalize("NFKD", item_id).encode("ascii", "ignore").decode("ascii")
    name = _SAFE.sub("_", folded).strip("._-")
    name = re.sub(r"\.{2,}", ".", name)
    return (name or "item")[:MAX_STEM]


def output_stem(item_id: str) -> str:
    """The collision-free file stem of an item id: :func:`safe_name`, plus ``-<hash>`` when that changed it."""
    name = safe_name(item_id)
    if name == item_id:
        return name
    digest = hashlib.sha256(item_id.encode("utf-8")).hexdigest()[:8]
    return f"{name[: MAX_STEM - 9]}-{digest}"


@dataclass(frozen=True)
class OutputPaths:
    """Where the outputs of one scene go inside ``out_dir``."""

    out_dir: Path
    stem: str

    @classmethod
    def for_scene(cls, out_dir: Path | str, scene_id: str) -> OutputPaths:
        return cls(Path(out_dir), output_stem(scene_id))

    @classmethod
    def of_mask(cls, mask: Path | str) -> OutputPaths:
        """The layout a mask file belongs to (``OUT/<stem>_cloudmask.tif``)."""
        mask = Path(mask)
        return cls(mask.parent, mask.name.removesuffix(MASK_SUFFIX))

    @property
    def item_id(self) -> str:
        """Id of the output STAC item (the stem)."""
        return self.stem

    @property
    def mask(self) -> Path:
        return self.out_dir / f"{self.stem}{MASK_SUFFIX}"

    @property
    def probabilities(self) -> Path:
        return self.out_dir / f"{self.stem}_probabilities.tif"

    @property
    def quicklook(self) -> Path:
        return self.out_dir / f"{self.stem}_quicklook.png"

    @property
    def thumbnail(self) -> Path:
        return self.out_dir / f"{self.stem}_thumbnail.png"

    @property
    def item(self) -> Path:
        return self.out_dir / "items" / f"{self.stem}.json"

    def __getitem__(self, key: str) -> Path:
        """``paths["mask"]`` etc., as the former ``mask_paths`` dict."""
        if key not in ("mask", "probabilities", "quicklook", "thumbnail", "item"):
            raise KeyError(key)
        path: Path = getattr(self, key)
        return path


__all__ = ["OutputPaths", "output_stem", "safe_name"]


def rows_relative_to(out_dir: Path | str, rows: list[dict[str, Any]], key: str = "mask") -> list[dict[str, Any]]:
    """Copies of summary ``rows`` with ``key`` (a file path) relative to ``out_dir``, so that a summary
    means the same wherever it is read from and whatever the working directory of the run was."""
    base = Path(out_dir).resolve()
    fixed = []
    for row in rows:
        value = row.get(key)
        if value and "://" not in str(value):
            row = {**row, key: os.path.relpath(Path(str(value)).resolve(), base)}
        fixed.append(row)
    return fixed
