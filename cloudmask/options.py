"""The user's masking knobs, once: :class:`MaskOptions`; and what they mean for one scene: :class:`MaskPlan`.

``cloudmask run``/``demo`` flags (:meth:`MaskOptions.from_cli`), a job spec's keys
(:meth:`MaskOptions.from_job`) and :func:`cloudmask.mask_scene`'s keywords (:meth:`MaskOptions.from_api`) all
become one frozen
:class:`MaskOptions`; a new knob is one field here, one flag, one job key. :meth:`MaskPlan.for_scene`
derives, once per scene, what every layer used to work out for itself: the model, the stream settings,
the margin check, the folded class table, the recipe fingerprint and the outputs a finished scene has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import StreamConfig
from .errors import ConfigError
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .card import ModelCard
    from .reader import ReaderConfig
    from .runtime import OvConfig
    from .scene import SceneSpec
    from .stac.api import HttpPolicy

__all__ = ["MaskOptions", "MaskPlan"]


@dataclass(frozen=True)
class MaskOptions:
    """Every user knob of masking (units: metres, seconds, pixels).

    ``model``: a built-in name, card or ONNX file, ``"auto"`` (per scene). ``backend``, ``instances``
    (model instances fed round-robin; None: the backend's choice), ``threads`` (ONNX Runtime threads per
    instance, 0: its choice), ``latency_s`` (per call, emulated backend). ``margin`` (patch halo, pixels
    each side; None: 26, unchecked), ``blend``, ``resolution`` (None: the model's), ``probabilities``,
    ``quicklook``, ``classes`` (``all`` | ``cloud-shadow``), ``postprocess`` (the options of
    :mod:`cloudmask.postprocess`), ``profile`` (None: detected), ``precision`` (auto, f32, bf16, int8) and
    ``calibration`` (int8's calibration set) for the openvino backend, ``retries`` (a scene's transient
    failures), ``http`` (remote reads' limits; None: the environment's).
    """

    model: str | Path | ModelCard = "auto"
    backend: str = "onnxruntime"
    instances: int | None = None
    threads: int = 0
    latency_s: float = 0.0
    margin: int | None = None
    blend: str = "tukey"
    resolution: float | None = None
    probabilities: bool = False
    quicklook: bool = True
    classes: str = "all"
    postprocess: Mapping[str, Any] | None = None
    profile: str | None = None
    precision: str = "auto"
    calibration: str | None = None
    retries: RetryPolicy = field(default_factory=lambda: RetryPolicy(count=0))
    http: HttpPolicy | None = None

    def __post_init__(self) -> None:
        if self.backend == "onnx":
            object.__setattr__(self, "backend", "onnxruntime")

    def check(self) -> MaskOptions:
        """Refuse bad combinations before any scene runs (:class:`ConfigError`, exit 2); returns self."""
        from .postprocess import PostProcess

        if self.latency_s and self.backend != "emulated":
            raise ConfigError("--latency-ms applies to --backend emulated (an emulated device); drop it or add "
                              "--backend emulated")
        if (self.precision != "auto" or self.calibration is not None) and self.backend != "openvino":
            raise ConfigError("--precision and --calibration apply to --backend openvino; drop them or add "
                              "--backend openvino")
        PostProcess.from_options(dict(self.postprocess or {}), resolution=10.0)
        return self

    def ov(self) -> OvConfig | None:
        """OpenVINO's settings (precision, threads, calibration) for ``backend="openvino"``, else None."""
        from .runtime import ov_config

        return ov_config(self.precision, self.calibration, self.threads) if self.backend == "openvino" else None

    @classmethod
    def from_cli(cls, *, model: str, backend: str, instances: int | None, threads: int, latency_ms: float,
                 margin: int | None, blend: str, resolution: float | None, probabilities: bool, quicklook: bool,
                 classes: str, threshold: float | None, class_thresholds: Sequence[str], average_over: int | None,
                 dilation_size: int | None, buffer_m: float | None, min_region: int | None, scl: str | None,
                 retries: int = 0, profile: str | None = None, http: HttpPolicy | None = None,
                 precision: str = "auto", calibration: str | Path | None = None) -> MaskOptions:
        """The options of ``run``/``demo`` flags (each keyword is a flag: ``--latency-ms``, ``--buffer``, ...)."""
        from .postprocess import parse_thresholds

        post = {"thresholds": parse_thresholds(class_thresholds) or None, "threshold": threshold,
                "average_over": average_over, "dilation_size": dilation_size, "buffer": buffer_m,
                "min_region": min_region, "scl": scl}
        return cls(model=model, backend=backend, instances=instances, threads=threads, latency_s=latency_ms / 1000.0,
                   margin=margin, blend=blend, resolution=resolution, probabilities=probabilities, quicklook=quicklook,
                   classes=classes, postprocess=post, profile=profile, retries=RetryPolicy(count=retries),
                   http=http, precision=precision,
                   calibration=None if calibration is None else str(calibration)).check()

    @classmethod
    def from_api(cls, *, model: str | Path | ModelCard | None = "auto", backend: str = "onnxruntime",
                 stream: StreamConfig | None = None, resolution: float | None = None, quicklook: bool = True,
                 classes: str = "all", postprocess: Any = None, profile: str | None = None,
                 precision: str = "auto", calibration: str | Path | None = None) -> MaskOptions:
        """The options of :func:`cloudmask.mask_scene`'s keywords (``stream``: margin, blend, probabilities;
        a :class:`~cloudmask.postprocess.PostProcess` object is recorded as its options)."""
        cfg = stream or StreamConfig()
        post = postprocess if postprocess is None or isinstance(postprocess, Mapping) else postprocess.as_dict()
        return cls(model="auto" if model is None else model, backend=backend, margin=cfg.margin, blend=cfg.blend,
                   resolution=resolution, probabilities=cfg.probabilities, quicklook=quicklook, classes=classes,
                   postprocess=post, profile=profile, precision=precision,
                   calibration=None if calibration is None else str(calibration)).check()

    @classmethod
    def from_job(cls, spec: Any) -> MaskOptions:
        """The options of a :class:`~cloudmask.jobs.spec.JobSpec` (its keys of the same names)."""
        return cls(model=spec.model, backend=spec.backend, instances=spec.instances, threads=spec.threads,
                   latency_s=spec.emulated_latency, margin=spec.margin,
                   resolution=spec.resolution, probabilities=spec.probabilities, quicklook=spec.quicklook,
                   classes=spec.classes, postprocess=spec.postprocess, profile=spec.profile, retries=spec.retries,
                   http=spec.http_policy(), precision=spec.precision,
                   calibration=None if spec.calibration is None else str(spec.calibration))

    def stream(self) -> StreamConfig:
        """The engine settings of these options."""
        return StreamConfig(margin=StreamConfig.margin if self.margin is None else self.margin,
                            blend=self.blend, probabilities=self.probabilities)  # type: ignore[arg-type]

    def reader(self) -> ReaderConfig:
        """The band reader's settings of these options."""
        from .reader import ReaderConfig

        return ReaderConfig(http=self.http)

    def outputs(self) -> tuple[str, ...]:
        """The assets besides the mask that a finished scene has under these options."""
        from .quicklook import available

        return (("quicklook",) if self.quicklook and available() else ()) + (
            ("probabilities",) if self.probabilities else ())


@dataclass(frozen=True)
class MaskPlan:
    """What :class:`MaskOptions` mean for one scene, worked out once (:meth:`for_scene`).

    ``card``: the model (classes as the model has them; ``classes`` folds them when the mask is made),
    ``stream``: engine settings, ``resolution``: the mask's, metres, ``class_table``: the mask's class
    table (``0=clear,1=cloud,...``), ``recipe``: the fingerprint a mask made now records, ``outputs``:
    the assets a finished scene has besides the mask.
    """

    options: MaskOptions
    card: ModelCard
    stream: StreamConfig
    resolution: float
    class_table: str
    recipe: str
    outputs: tuple[str, ...]

    @classmethod
    def for_scene(cls, options: MaskOptions, spec: SceneSpec, card: ModelCard | None = None) -> MaskPlan:
        """The plan of ``spec`` (``card``: the model when the caller resolved it already)."""
        from .classes import collapse_names
        from .grid import max_margin
        from .models import choose_model
        from .pipeline import scene_fingerprint

        card = card if card is not None else choose_model(options.model, spec)
        stream = options.stream()
        if card.kind == "segmentation" and options.margin is not None and stream.margin > max_margin(card.patch_size):
            raise ConfigError(f"--margin {stream.margin} is too wide for {card.name}'s {card.patch_size}-px patches: "
                              f"use at most {max_margin(card.patch_size)} (the core must be as wide as the halo)")
        folded = replace(card, classes=collapse_names(card.classes, options.classes)) if options.classes != "all" else card
        post = dict(options.postprocess) if options.postprocess else None
        recipe = scene_fingerprint(spec, card, resolution=options.resolution, classes=options.classes,
                                   postprocess=post, stream=stream)
        return cls(options=options, card=card, stream=stream, resolution=float(options.resolution or card.resolution),
                   class_table=str(folded.class_table.summary()), recipe=recipe, outputs=options.outputs())
