"""The model card: everything the pipeline must know to feed a model and read its output.

A :class:`ModelCard` names the bands a model takes (STAC ``eo:bands`` common names, in input order), the
product level it was trained on, the resolution it expects (metres), how reflectance is normalised, its
patch size (pixels), its kind and what its output channels mean. Where cards come from (built-in names,
card files, STAC MLM items) is :mod:`cloudmask.models`; this module imports neither of them.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .classes import ClassTable, canonical, class_names, class_value
from .errors import ModelCardError
from .normalisation import Normalisation, standardize

log = logging.getLogger(__name__)

#: STAC common names a card may ask for.
KNOWN_BANDS = (
    "coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3",
    "nir", "nir08", "nir09", "cirrus", "swir16", "swir22",
)

ProductLevel = Literal["l1c", "l2a"]
#: Model kinds and their I/O contract: ``segmentation`` [B, C, H, W] -> [B, K, H, W]; ``pixel`` one spectrum per
#: sample, [N, C] (or [N, C, 1, 1]) -> [N, K], no patch or halo; ``patch-classifier`` [B, C, H, W] -> [B, K], one
#: label per patch (the mask is written at patch resolution).
ModelKind = Literal["segmentation", "pixel", "patch-classifier"]
KINDS: tuple[str, ...] = ("segmentation", "pixel", "patch-classifier")


@dataclass(frozen=True)
class ModelCard:
    """What the pipeline must know about a segmentation model.

    ``normalisation`` turns reflectance (0–1) into model input (:mod:`cloudmask.normalisation`: standardize,
    scale, minmax, log1p, clip, chains); ``mean``/``std`` are the classic per-band ``(reflectance - mean) / std``
    (given alone they make the normalisation; they mirror it when it is one ``standardize``). ``classes`` maps each output channel to a cloudmask class name (``clear``, ``cloud``,
    ``shadow``); several channels may map to one class (their probabilities add up).
    """

    name: str
    onnx_path: Path
    bands: tuple[str, ...]
    product_level: ProductLevel
    resolution: float
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    patch_size: int = 256
    classes: tuple[str, ...] = ("clear", "cloud", "shadow")
    output: Literal["logits", "probabilities"] = "logits"
    kind: ModelKind = "segmentation"
    version: str = ""
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    normalisation: Normalisation | None = None
    #: One-channel models only: the channel is P(class) (``output: probabilities``; ``logits``: sigmoid of
    #: it) and a pixel takes the class where P > ``threshold``, else clear. ``None`` means 0.5.
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.normalisation is None:
            if len(self.mean) != len(self.bands) or len(self.std) != len(self.bands):
                raise ModelCardError(
                    f"model card '{self.name}': normalisation mean and std need one value per band "
                    f"({len(self.bands)}), got {len(self.mean)} and {len(self.std)}"
                )
            object.__setattr__(self, "normalisation", standardize(self.mean, self.std))
        elif not self.mean and not self.std and (std := self.normalisation.standardize) is not None:
            object.__setattr__(self, "mean", std.mean * (self.n_bands if len(std.mean) == 1 else 1))
            object.__setattr__(self, "std", std.std * (self.n_bands if len(std.std) == 1 else 1))
        _validate(self)

    @property
    def n_bands(self) -> int:
        return len(self.bands)

    @property
    def one_channel(self) -> bool:
        """One output channel: P(class) against ``threshold`` (the other class is clear)."""
        return len(self.classes) == 1

    @property
    def decision_threshold(self) -> float:
        """The one-channel model's threshold on P(class) (default 0.5)."""
        return 0.5 if self.threshold is None else float(self.threshold)

    @property
    def class_index(self) -> np.ndarray:
        """Mask class value (0 clear, 1 cloud, 2 shadow, 3 thin cloud, 4 snow) of every output channel."""
        return np.array([class_value(c) for c in self.classes], dtype=np.uint8)

    @property
    def class_table(self) -> ClassTable:
        """The classes this model's masks hold (values 0 .. highest named; see :mod:`cloudmask.classes`)."""
        return ClassTable.for_names(self.classes)

    @property
    def read_affine(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-band ``(multiply, add)`` of the card's normalisation when it is affine (a reader folds it into
        the DN scaling: one pass instead of three), else None (see ``Normalisation.affine``)."""
        norm = self.normalisation
        return norm.affine(self.n_bands) if norm is not None else None

    def normalise(self, reflectance: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalise ``(C, ...)`` reflectance in model band order, in float32 (in place if ``out``)."""
        assert self.normalisation is not None  # set in __post_init__
        return self.normalisation.apply(reflectance, out=out)

    def with_onnx(self, path: Path, **changes: Any) -> ModelCard:
        """A copy of this card pointing at another graph (e.g. an exported or quantized one)."""
        return replace(self, onnx_path=Path(path), **changes)

    def to_dict(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The card as written to a card file (``onnx`` relative to ``relative_to`` when given)."""
        onnx = self.onnx_path
        if relative_to is not None:
            try:
                onnx = onnx.resolve().relative_to(relative_to.resolve())
            except ValueError:
                onnx = onnx.resolve()
        d: dict[str, Any] = {
            "name": self.name,
            "onnx": str(onnx),
            "bands": list(self.bands),
            "product_level": self.product_level,
            "resolution": self.resolution,
            "normalisation": self.normalisation.to_dict() if self.normalisation is not None else {},
            "patch_size": self.patch_size,
            "classes": list(self.classes),
            "output": self.output,
            "kind": self.kind,
        }
        if self.version:
            d["version"] = self.version
        if self.description:
            d["description"] = self.description
        if self.threshold is not None:
            d["threshold"] = self.threshold
        extra = dict(self.extra)
        if relative_to is not None and isinstance(extra.get("metis_model"), str):  # like onnx: relative to the card
            compiled = Path(extra["metis_model"])
            try:
                extra["metis_model"] = str(compiled.resolve().relative_to(relative_to.resolve()))
            except ValueError:
                extra["metis_model"] = str(compiled.resolve())
        d.update(extra)
        return d

    def save(self, path: Path) -> Path:
        """Write the card as YAML (or JSON for a ``.json`` suffix) and return the path."""
        path = Path(path)
        d = self.to_dict(relative_to=path.parent)
        text = json.dumps(d, indent=2) if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
        path.write_text(text)
        return path


def _validate(card: ModelCard) -> None:
    where = f"model card '{card.name}'"
    unknown = [b for b in card.bands if b not in KNOWN_BANDS]
    if not card.bands or unknown:
        raise ModelCardError(
            f"{where}: bands must be STAC common names ({', '.join(KNOWN_BANDS)}); got {list(card.bands)}"
        )
    if card.product_level not in ("l1c", "l2a"):
        raise ModelCardError(f"{where}: product_level must be 'l1c' or 'l2a', got {card.product_level!r}")
    if not math.isfinite(card.resolution) or card.resolution <= 0:
        raise ModelCardError(f"{where}: resolution must be a positive, finite number of metres, "
                             f"got {card.resolution!r}")
    if card.normalisation is not None:
        card.normalisation.validate(card.n_bands, f"{where}: normalisation")
    if card.kind not in KINDS:
        raise ModelCardError(f"{where}: kind must be one of {', '.join(KINDS)}, got {card.kind!r}")
    if card.kind != "pixel" and card.patch_size < 16:
        raise ModelCardError(f"{where}: patch_size must be >= 16 pixels, got {card.patch_size}")
    bad = [c for c in card.classes if not _known_class(c)]
    if bad or not card.classes:
        raise ModelCardError(
            f"{where}: classes must name each output channel as one of {', '.join(class_names())}; got {bad}"
        )
    if card.output not in ("logits", "probabilities"):
        raise ModelCardError(f"{where}: output must be 'logits' or 'probabilities', got {card.output!r}")
    if card.one_channel and canonical(card.classes[0]) == "clear":
        raise ModelCardError(
            f"{where}: a one-channel model gives P(class) of a class other than clear (e.g. classes: [cloud]); "
            f"got classes {list(card.classes)}"
        )
    if card.threshold is not None:
        if not card.one_channel:
            raise ModelCardError(
                f"{where}: 'threshold' is for one-channel models (classes: [cloud]: cloud where P > threshold); "
                f"this card has {len(card.classes)} channels: drop it and use the --threshold post-processing option"
            )
        if not 0.0 < float(card.threshold) < 1.0:
            raise ModelCardError(f"{where}: threshold must be a probability between 0 and 1, got {card.threshold}")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'output'?)`` for a misspelt ``word``, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class CardFile(BaseModel):
    """The fields a card file (YAML or JSON) may hold, checked all at once; any other key is an error.

    The first block are :class:`ModelCard`'s own arguments; every other field is kept in
    :attr:`ModelCard.extra` when the card gives it. **A new card field is one line in the second block.**
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)

    name: str | None = None
    onnx: str
    bands: list[str]
    product_level: str
    resolution: float  # metres per pixel, finite and > 0
    normalisation: Any  # checked by cloudmask.normalisation.from_card
    patch_size: int = 256  # pixels
    kind: str = "segmentation"
    classes: list[str] = ["clear", "cloud", "shadow"]
    output: str = "logits"
    version: str = ""
    description: str = ""
    threshold: float | None = None  # one-channel models: the class where P > threshold (default 0.5)

    # kept in ModelCard.extra
    license: str | None = None
    architecture: str | None = None  # e.g. LightGBM (STAC MLM mlm:architecture)
    postprocess: dict[str, Any] | None = None  # default post-processing (cloudmask.postprocess options)
    metis: dict[str, Any] | None = None  # written by `cloudmask metis export`
    metis_model: str | None = None  # the compiled Metis model the metis backend loads
    fold: list[int] | None = None  # folded pixel model: [H, W] pixels per call
    folded_from: dict[str, Any] | None = None  # the pixel model a folded one was exported from
    quantization: dict[str, Any] | None = None  # written by `cloudmask metis int8-preview`
    evaluation: dict[str, Any] | None = None  # free-form: how the model was evaluated
    patches_per_call: int | None = None  # patch classifier exported with k patches stacked per call
    stacked_from: dict[str, Any] | None = None  # the patch classifier a stacked one was exported from

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in KNOWN_BANDS]
        if not v or unknown:
            raise ValueError(f"must be STAC common names ({', '.join(KNOWN_BANDS)}); got {unknown or v}")
        return v

    @field_validator("product_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("l1c", "l2a"):
            raise ValueError(f"must be 'l1c' or 'l2a', got {v!r}")
        return v.lower()

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be a positive number of metres, got {v!r}")
        return v

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"must be one of {', '.join(KINDS)}, got {v!r}")
        return v

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not _known_class(c)]
        if bad or not v:
            raise ValueError(f"must name each output channel as one of {', '.join(class_names())}; got {bad or v}")
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if v not in ("logits", "probabilities"):
            raise ValueError(f"must be 'logits' or 'probabilities', got {v!r}")
        return v

    @model_validator(mode="after")
    def _patch(self) -> CardFile:
        if self.kind != "pixel" and self.patch_size < 16:
            raise ValueError(f"'patch_size' must be >= 16 pixels, got {self.patch_size}")
        return self

    @classmethod
    def card_arguments(cls) -> tuple[str, ...]:
        """The fields that are :class:`ModelCard` arguments (the rest go to ``extra``)."""
        return ("name", "onnx", "bands", "product_level", "resolution", "normalisation", "patch_size", "kind",
                "classes", "output", "version", "description", "threshold")


REQUIRED_FIELDS = tuple(k for k, f in CardFile.model_fields.items() if f.is_required())


def card_problems(raw: Mapping[str, Any]) -> tuple[CardFile | None, list[str]]:
    """Validate a card file's mapping: the parsed fields, or every problem, each naming its field."""
    try:
        return CardFile.model_validate(dict(raw)), []
    except ValidationError as err:
        return None, _problems(err)


def _problems(err: ValidationError) -> list[str]:
    keys = list(CardFile.model_fields)
    out: list[str] = []
    missing = [".".join(str(p) for p in e["loc"]) for e in err.errors() if e["type"] == "missing"]
    if missing:
        out.append(f"missing field(s) {', '.join(missing)}; a card needs {', '.join(REQUIRED_FIELDS)} (see README, "
                   "'Bring your own model')")
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "missing":
            continue
        elif e["type"] == "extra_forbidden":
            out.append(f"unknown key '{loc}'{did_you_mean(str(loc), keys)}; valid keys are {', '.join(keys)}")
        elif not e["loc"]:  # a model validator: its message names the field
            out.append(msg)
        else:
            got = "" if e["type"] == "value_error" else f", got {e.get('input')!r}"
            out.append(f"'{loc}' {msg[0].lower() + msg[1:] if msg else 'is invalid'}{got}")
    return out


def _known_class(name: str) -> bool:
    try:
        canonical(name)
    except ValueError:
        return False
    return True


def graph_output_channels(onnx_path: Path) -> int | None:
    """Channel count (axis 1) of the ONNX graph's first output, ``None`` when it is not fixed."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises several types for corrupt files
        raise ModelCardError(f"cannot read ONNX model {onnx_path}: {err}; check the file or re-export it") from err
    if not model.graph.output:
        return None
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) >= 2 and dims[1].dim_value:
        return int(dims[1].dim_value)
    try:  # not declared: ONNX shape inference often knows it (e.g. a Conv head's output channels)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is best effort; the runtime checks again
        return None
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    return int(dims[1].dim_value) if len(dims) >= 2 and dims[1].dim_value else None


def graph_output_op(onnx_path: Path) -> str | None:
    """The op type of the node that makes the graph's first output (``None`` when unreadable)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - the card's other checks report an unreadable file
        return None
    if not model.graph.output:
        return None
    out = model.graph.output[0].name
    return next((n.op_type for n in model.graph.node if out in n.output), None)


def graph_output_size(onnx_path: Path, n_bands: int, patch: int) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(input (H, W), output (H, W))`` of the graph's first input and output, pixels, by ONNX shape
    inference for one ``n_bands`` x ``patch`` x ``patch`` patch where the graph leaves them open;
    ``None`` when inference cannot tell."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
        inits = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in inits]
        if not inputs or not model.graph.output:
            return None
        dims = inputs[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            return None
        for d, value in zip(dims, (1, n_bands, patch, patch), strict=True):
            if not d.dim_value:  # symbolic or unknown: inferred for one patch
                d.dim_value = value
        size_in = (int(dims[2].dim_value), int(dims[3].dim_value))
        out = onnx.shape_inference.infer_shapes(model).graph.output[0].type.tensor_type.shape.dim
    except Exception:  # noqa: BLE001 - inference is best effort; the runtime checks again
        return None
    if len(out) != 4 or not out[2].dim_value or not out[3].dim_value:
        return None
    return size_in, (int(out[2].dim_value), int(out[3].dim_value))


def check_graph(card: ModelCard, source: str | None = None) -> None:
    """Refuse a card whose ``classes`` do not name every output channel of its ONNX graph, or a segmentation
    model whose output is not as large as its input (valid convolutions: 256 -> 254)."""
    where = source or f"model card {card.name!r}"
    channels = graph_output_channels(card.onnx_path)
    stack = card.extra.get("patches_per_call") if card.kind == "patch-classifier" else None
    if channels is not None and isinstance(stack, int) and stack > 1:  # patch-stacked: [1, k*K, 1, 1]
        channels = channels // stack if channels % stack == 0 else channels
    if channels is not None and channels != len(card.classes) and graph_output_op(card.onnx_path) == "ArgMax":
        # class indices, not scores: `cloudmask metis export` removes the ArgMax (the host takes it)
        log.warning("%s: the graph ends in ArgMax (class indices); cloudmask runs on the scores before it: "
                    "export it with `cloudmask metis export` or remove the ArgMax", source or card.name)
        return
    if channels is not None and channels != len(card.classes):
        raise ModelCardError(
            f"{where}: the ONNX output has {channels} channels but the card "
            f"lists {len(card.classes)} classes {list(card.classes)}; list one class per output channel in "
            f"'classes' (several channels may name the same class, e.g. [clear, cloud, cloud, shadow])"
        )
    if card.kind != "segmentation":
        return
    sizes = graph_output_size(card.onnx_path, card.n_bands, card.patch_size)
    if sizes is not None and sizes[0] != sizes[1]:
        (ih, iw), (oh, ow) = sizes
        raise ModelCardError(
            f"{where}: the ONNX graph turns a {ih}x{iw} input into a {oh}x{ow} output; a segmentation model must "
            "score every input pixel (output as large as its input): export it with 'same' padding, or crop or "
            "pad its output to the input size"
        )
