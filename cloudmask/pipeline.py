"""One scene from STAC item to finished COG mask: the composition of reader, engine and writer."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .models import CLASSES, NODATA, ModelCard, load_model
from .reader import RasterSource, ReaderConfig
from .runtime import Runner, make_runners
from .scene import SceneSpec
from .stream import StreamConfig, StreamStats, stream_scene
from .writer import CogConfig, CogSink, fractions_from_counts

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(item_id: str) -> str:
    """A file name from an item id that cannot leave its directory (``../../x`` -> ``x``)."""
    name = _SAFE.sub("_", item_id).strip("._-")
    name = re.sub(r"\.{2,}", ".", name)
    if not name:
        raise ConfigError(f"item id {item_id!r} gives no usable file name")
    return name[:200]


def mask_paths(out_dir: Path, item_id: str) -> dict[str, Path]:
    """Where the outputs of one scene go inside ``out_dir``."""
    stem = safe_name(item_id)
    return {
        "mask": out_dir / f"{stem}_cloudmask.tif",
        "probabilities": out_dir / f"{stem}_probabilities.tif",
        "quicklook": out_dir / f"{stem}_quicklook.png",
        "item": out_dir / "items" / f"{stem}.json",
    }


@dataclass
class MaskResult:
    """What masking one scene produced: paths, class percentages, timing."""

    scene_id: str
    mask: Path
    probabilities: Path | None
    fractions: dict[str, float]
    stats: StreamStats
    model: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """One summary row: scene, class percentages (of valid pixels), nodata share, seconds."""
        return {
            "scene": self.scene_id,
            **{k: round(v, 2) for k, v in valid_fractions(self.fractions).items()},
            "nodata": round(self.fractions["nodata"], 2),
            "seconds": round(self.seconds, 2),
            "mask": str(self.mask),
        }


def valid_fractions(fractions: dict[str, float]) -> dict[str, float]:
    """Class percentages of the valid pixels only (nodata excluded)."""
    valid = 100.0 - fractions["nodata"]
    if valid <= 0:
        return dict.fromkeys(CLASSES.values(), 0.0)
    return {name: 100.0 * fractions[name] / valid for name in CLASSES.values()}


def choose_model(model: str | Path | ModelCard | None, spec: SceneSpec) -> ModelCard:
    """Resolve ``model``; ``None``/``"auto"`` picks the ukis model of the scene's product level: the
    6-band one when the scene has both SWIR bands, else the 4-band (blue, green, red, nir) one."""
    if model is None or str(model) == "auto":
        six = load_model(f"ukis-6b-{spec.product_level}")
        if all(b in spec.bands for b in six.bands):
            return six
        log.info("scene %s has no %s: model auto uses the 4-band model", spec.id,
                 "/".join(b for b in six.bands if b not in spec.bands))
        return load_model(f"ukis-4b-{spec.product_level}")
    card = load_model(model)
    if card.product_level != spec.product_level:
        log.warning(
            "model %s was trained on %s but scene %s is %s; results may be worse",
            card.name, card.product_level.upper(), spec.id, spec.product_level.upper(),
        )
    return card


class _HistogramSink:
    """Wraps a sink and counts class pixels as blocks pass."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts = np.zeros(256, np.int64)

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        self.counts += np.bincount(classes.ravel(), minlength=256)
        self.inner.write_block(row, classes, probabilities)


def mask_scene_spec(
    spec: SceneSpec,
    out_dir: Path,
    model: str | Path | ModelCard | None = None,
    *,
    runners: Sequence[Runner] | None = None,
    backend: str = "onnxruntime",
    stream: StreamConfig | None = None,
    reader: ReaderConfig | None = None,
    cog: CogConfig | None = None,
    resolution: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> MaskResult:
    """Mask one scene into ``out_dir`` (``<id>_cloudmask.tif``; ``<id>_probabilities.tif`` on request).

    ``resolution`` (metres) overrides the card's. ``runners`` lets callers reuse loaded models across
    scenes. The mask is on the scene's own grid at that resolution, anchored on the tile corner.
    """
    t0 = time.perf_counter()
    card = choose_model(model, spec)
    res = float(resolution or card.resolution)
    cfg = stream or StreamConfig()
    paths = mask_paths(Path(out_dir), spec.id)
    geobox = spec.geobox(res)
    runs = runners if runners is not None else make_runners(card, backend)
    tags = {
        "CLOUDMASK_MODEL": card.name,
        "CLOUDMASK_SOURCE_ITEM": spec.id,
        "CLOUDMASK_CLASSES": ",".join(f"{k}={v}" for k, v in CLASSES.items()) + f",{NODATA}=nodata",
    }
    source = RasterSource(spec, card.bands, geobox, reader)
    try:
        with CogSink(
            paths["mask"], geobox, paths["probabilities"] if cfg.probabilities else None, cog, tags
        ) as sink:
            counter = _HistogramSink(sink)
            stats = stream_scene(source, card, runs, counter, cfg, progress)
    finally:
        source.close()
        if runners is None:
            for r in runs:
                r.close()
    fractions = fractions_from_counts(counter.counts)
    seconds = time.perf_counter() - t0
    log.info("masked %s in %.1f s: %s", spec.id, seconds, fractions)
    return MaskResult(
        scene_id=spec.id,
        mask=paths["mask"],
        probabilities=paths["probabilities"] if cfg.probabilities else None,
        fractions=fractions,
        stats=stats,
        model=card.name,
        seconds=seconds,
    )
