"""One scene from STAC item to finished COG mask: the composition of reader, engine and writer."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .classes import THREE_CLASSES, ClassShares, ClassTable, collapse_names, histogram
from .engine import StreamConfig, StreamStats, output_geobox, stream_scene
from .engine.producer import reads_dn
from .engine.strategies import first_rows
from .layout import OutputPaths, safe_name
from .models import ModelCard
from .postprocess import PostProcessSink, SclRows, for_card
from .reader import RasterSource, ReaderConfig
from .recipe import fingerprint, mask_recipe
from .runtime import Runner, make_runners, ov_config
from .runtime.shapes import runner_shapes
from .scene import SceneSpec
from .writer import CogConfig, CogSink

log = logging.getLogger(__name__)

__all__ = ["MaskResult", "OutputPaths", "mask_paths", "mask_scene_spec", "safe_name", "scene_fingerprint"]


def mask_paths(out_dir: Path, item_id: str) -> OutputPaths:
    """Where the outputs of one scene go inside ``out_dir`` (see :class:`cloudmask.layout.OutputPaths`)."""
    return OutputPaths.for_scene(out_dir, item_id)


@dataclass
class MaskResult:
    """What masking one scene produced: paths, class percentages, timing.

    ``fractions``: each class in percent of the valid pixels, ``nodata`` in percent of all pixels
    (0.0 for the classes of a scene without valid pixels; ``counts`` tells them apart). ``classes``
    is the mask's class table, ``counts`` the pixels per class name (``nodata`` included), ``card``
    the model card the mask was made with (``model`` is its name).
    """

    scene_id: str
    mask: Path
    probabilities: Path | None
    fractions: dict[str, float]
    stats: StreamStats
    model: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    classes: ClassTable = THREE_CLASSES
    counts: dict[str, int] = field(default_factory=dict)
    card: ModelCard | None = None

    @property
    def shares(self) -> ClassShares:
        """The class counts and percentages of the mask (from ``counts``)."""
        return ClassShares(self.classes, self.counts)

    def row(self) -> dict[str, Any]:
        """One summary row: scene, class percentages (of valid pixels; empty without), nodata share, seconds."""
        pct = self.shares.percentages if self.counts else dict(self.fractions)
        return {
            "scene": self.scene_id,
            **{k: (None if v is None else round(v, 2)) for k, v in pct.items()},
            "seconds": round(self.seconds, 2),
            "mask": str(self.mask),
        }


class _HistogramSink:
    """Wraps a sink and counts class pixels as blocks pass."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts = np.zeros(256, np.int64)

    def write_block(self, row: int, classes: np.ndarray, probabilities: np.ndarray | None) -> None:
        self.counts += histogram(classes)
        self.inner.write_block(row, classes, probabilities)


def scene_fingerprint(
    spec: SceneSpec,
    card: ModelCard,
    *,
    resolution: float | None = None,
    classes: str = "all",
    postprocess: Any = None,
    stream: StreamConfig | None = None,
) -> str:
    """The fingerprint (:mod:`cloudmask.recipe`) of what :func:`mask_scene_spec` would make of ``spec``
    with these arguments; recorded in the output item, compared to keep a finished mask."""
    res = float(resolution or card.resolution)
    cfg = stream or StreamConfig()
    folded = replace(card, classes=collapse_names(card.classes, classes)) if classes != "all" else card
    out_box = output_geobox(folded, spec.geobox(res))
    post = for_card(folded, postprocess, resolution=abs(float(out_box.resolution.x)))
    return fingerprint(mask_recipe(card, classes=classes, postprocess=post.as_dict() if post.active else None,
                                   resolution=res, probabilities=cfg.probabilities, margin=cfg.margin,
                                   blend=cfg.blend))


def mask_scene_spec(
    spec: SceneSpec,
    out_dir: Path,
    card: ModelCard,
    *,
    runners: Sequence[Runner] | Callable[[], Sequence[Runner]] | None = None,
    backend: str = "onnxruntime",
    stream: StreamConfig | None = None,
    reader: ReaderConfig | None = None,
    cog: CogConfig | None = None,
    resolution: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    classes: str = "all",
    postprocess: Any = None,
    device: AbstractContextManager[Any] | None = None,
    precision: str = "auto",
    calibration: str | Path | None = None,
) -> MaskResult:
    """Mask one scene into ``out_dir`` (``<id>_cloudmask.tif``; ``<id>_probabilities.tif`` on request).

    ``card``: the model, resolved by the caller (:func:`cloudmask.models.choose_model`; ``classes``
    may still fold its classes). ``resolution`` (metres) overrides the card's. ``runners`` lets
    callers reuse loaded models across scenes; a callable returning them is called once the scene's
    first rows are being read (a model that loads on first use loads while they decode; so does one
    made here when ``runners`` is None). The mask is on the scene's own grid at that resolution,
    anchored on the tile corner.
    ``classes="cloud-shadow"`` folds the card's classes onto the three-class contract (thin cloud
    into cloud, snow into clear; their probabilities add up) before masking. ``postprocess`` (a
    :class:`~cloudmask.postprocess.PostProcess` or a mapping of its options) adds to the card's own
    post-processing defaults; it runs on the streamed blocks (``result.extra["postprocess"]``).
    ``device`` (a :class:`~cloudmask.overlap.Turn` in a batch) is held only while the scene streams:
    the bands are opened and the first rows read before it is entered, and the COG is finished
    after it is left, so the next scene can use the runners meanwhile. ``precision`` (auto, f32, bf16, int8)
    and ``calibration`` (int8's calibration set) apply to ``backend="openvino"`` (:mod:`cloudmask.runtime.openvino`);
    ``result.extra`` records the backend and precision that ran.
    """


    t0 = time.perf_counter()
    recipe = scene_fingerprint(spec, card, resolution=resolution, classes=classes, postprocess=postprocess,
                               stream=stream)
    if classes != "all":
        card = replace(card, classes=collapse_names(card.classes, classes))
    table = card.class_table
    res = float(resolution or card.resolution)
    cfg = stream or StreamConfig()
    paths = mask_paths(Path(out_dir), spec.id)
    geobox = spec.geobox(res)
    tags = {"CLOUDMASK_MODEL": card.name, "CLOUDMASK_SOURCE_ITEM": spec.id}
    out_box = output_geobox(card, geobox)
    post = for_card(card, postprocess, resolution=abs(float(out_box.resolution.x)))
    run_cfg = replace(cfg, probabilities=True) if post.needs_probabilities else cfg
    scl = None
    if post.scl is not None and "scl" not in spec.bands:
        log.warning("scene %s has no SCL asset: --scl %s is skipped", spec.id, post.scl)
    loaded = runners if runners is not None and not callable(runners) else None
    source = RasterSource(spec, card.bands, geobox, reader)
    if post.scl is not None and "scl" in spec.bands:  # read with the scene's GDAL options (a provider's endpoint)
        href = spec.bands["scl"].href
        try:
            scl = SclRows(href, out_box, env=source.gdal_env(href))
        except BaseException:
            source.close()
            raise
    runs: Sequence[Runner] = ()
    try:
        source.check_grid()  # a grid the files cannot fill is refused before anything is read or written
        if device is not None or loaded is None:
            # the first strip is read, as the stream will ask for it (DN, or normalised), while the device
            # still works on the scene before, or while the model loads
            shape = loaded[0].input_shape if loaded else runner_shapes(card)[0]
            source.prefetch(0, first_rows(card, shape, geobox.height, geobox.width, run_cfg.strip_rows),
                            affine=card.read_affine, raw=reads_dn(card) and source.dn_dtype is not None)
        if loaded is not None:
            runs = loaded
        elif callable(runners):
            runs = runners()
        else:
            runs = make_runners(card, backend, ov=ov_config(precision, calibration))
        with CogSink(
            paths.mask, out_box, paths.probabilities if cfg.probabilities else None, cog, tags,
            classes=table,
        ) as sink:
            counter = _HistogramSink(sink)
            target = (PostProcessSink(counter, post, out_box.height, out_box.width, provider=scl)
                      if post.active else counter)
            with device if device is not None else contextlib.nullcontext():
                stats = stream_scene(source, card, runs, target, run_cfg, progress)
    finally:
        source.close()
        if scl is not None:
            scl.close()
        if runners is None:
            for r in runs:
                r.close()
    shares = table.shares(counter.counts)
    fractions = shares.fractions()
    seconds = time.perf_counter() - t0
    log.info("masked %s in %.1f s: %s", spec.id, seconds, fractions)
    return MaskResult(
        scene_id=spec.id,
        mask=paths.mask,
        probabilities=paths.probabilities if cfg.probabilities else None,
        fractions=fractions,
        stats=stats,
        model=card.name,
        seconds=seconds,
        classes=table,
        counts=dict(shares.counts),
        card=card,
        extra={"recipe": recipe, **({"postprocess": post.as_dict()} if post.active else {}), **_backend_of(runs)},
    )


def _backend_of(runs: Sequence[Runner]) -> dict[str, Any]:
    """``backend`` and ``precision`` (f32, bf16, int8) the runners report, for the item and stats; {} if none."""
    backend = getattr(runs[0], "backend", None) if runs else None
    if not isinstance(backend, str):
        return {}
    precision = getattr(runs[0], "precision", None)
    return {"backend": backend, **({"precision": precision} if isinstance(precision, str) else {})}
