"""Model cards as STAC items with the Machine Learning Model (MLM) extension.

:func:`card_to_mlm` writes a :class:`~cloudmask.models.ModelCard` as a small STAC item that other
tools understand (``mlm:name``, ``mlm:architecture``, ``mlm:tasks``, ``mlm:framework``,
``mlm:input`` with bands, input structure and normalisation, ``mlm:output`` with the class of each
output channel, the ONNX file as the ``mlm:model`` asset); :func:`card_from_mlm` reads one back.
``load_model`` accepts such an item (``.json``) like a YAML card; the YAML card stays the easy way.

Normalisation: a single ``standardize`` is ``value_scaling`` ``z-score`` per band and a single
``clip`` is ``clip``/``clip-min``/``clip-max`` (the MLM operations with the same meaning); anything
else (``minmax`` with clipping, ``scale``, ``log1p``, chains) is a ``pre_processing_function`` of
format ``cloudmask-normalisation`` whose expression is the card's normalisation mapping. Reading also
accepts MLM ``min-max``, ``offset`` and ``scale`` value scaling. cloudmask's own fields (product level,
resolution, model kind, output form, post-processing defaults) use the ``cloudmask:`` prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions import mlm
from pystac.extensions.classification import Classification

from .card import ModelCard, check_graph
from .errors import ModelCardError
from .normalisation import Clip, Normalisation, Scale, Standardize, Step, from_card

MLM_SCHEMA = mlm.MLMExtension.get_schema_uri()
NORMALISATION_FORMAT = "cloudmask-normalisation"
_TASKS = {"segmentation": ["semantic-segmentation"], "pixel": ["semantic-segmentation", "classification"],
          "patch-classifier": ["scene-classification"]}


def _dims(card: ModelCard) -> tuple[list[int], list[str], list[int], list[str]]:
    k = len(card.classes)
    if card.kind == "pixel":
        return [-1, card.n_bands], ["batch", "channel"], [-1, k], ["batch", "class"]
    p = card.patch_size
    if card.kind == "patch-classifier":
        return [1, card.n_bands, p, p], ["batch", "channel", "height", "width"], [1, k], ["batch", "class"]
    return ([1, card.n_bands, p, p], ["batch", "channel", "height", "width"],
            [1, k, p, p], ["batch", "class", "height", "width"])


def _value_scaling(norm: Normalisation, n_bands: int) -> list[dict[str, Any]] | None:
    """MLM ``value_scaling`` when the normalisation is one step MLM expresses exactly, else ``None``."""
    if len(norm.steps) != 1:
        return None
    step = norm.steps[0]

    def per_band(values: tuple[float, ...]) -> list[float]:
        return list(values) * (n_bands if len(values) == 1 else 1)

    if isinstance(step, Standardize):
        return [{"type": "z-score", "mean": m, "stddev": s}
                for m, s in zip(per_band(step.mean), per_band(step.std), strict=True)]
    if isinstance(step, Clip):
        if step.low is not None and step.high is not None:
            return [{"type": "clip", "minimum": lo, "maximum": hi}
                    for lo, hi in zip(per_band(step.low), per_band(step.high), strict=True)]
        if step.low is not None:
            return [{"type": "clip-min", "minimum": lo} for lo in per_band(step.low)]
        assert step.high is not None
        return [{"type": "clip-max", "maximum": hi} for hi in per_band(step.high)]
    return None


def card_to_mlm(card: ModelCard, relative_to: Path | None = None) -> dict[str, Any]:
    """The card as a STAC item (dict) with the MLM extension; the ONNX href is relative to ``relative_to``.

    Built with pystac's MLM helpers (:mod:`pystac.extensions.mlm`: the schema version pystac knows).
    One exception: ``value_scaling`` is set as a list (one object per band, as the MLM spec has it);
    pystac's ``ModelInput.value_scaling`` takes a single object.
    """
    d = card.to_dict(relative_to=relative_to)
    shape, order, oshape, oorder = _dims(card)
    assert card.normalisation is not None
    scaling = _value_scaling(card.normalisation, card.n_bands)
    pre = None
    if scaling is None and card.normalisation.steps:
        pre = mlm.ProcessingExpression.create(format=NORMALISATION_FORMAT, expression=card.normalisation.to_dict())
    tasks = [mlm.TaskType(t) for t in _TASKS[card.kind]]
    item = pystac.Item(
        id=card.name, geometry=None, bbox=None, datetime=None,
        start_datetime=datetime(2015, 6, 23, tzinfo=UTC),  # Sentinel-2A launch: the data the model applies to
        end_datetime=datetime(2100, 1, 1, tzinfo=UTC),
        properties={"description": card.description or f"cloudmask model {card.name}"},
    )
    model_input = mlm.ModelInput.create(
        name="reflectance", bands=list(card.bands),
        input=mlm.InputStructure.create(shape=shape, dim_order=order, data_type=mlm.DataType.FLOAT32),
        description=f"Sentinel-2 {card.product_level.upper()} reflectance (0-1) at {card.resolution:g} m",
        value_scaling=None, resize_type=None, pre_processing_function=pre,
    )
    model_input.properties["value_scaling"] = (
        None if scaling is None else [mlm.ValueScaling.create(**v).to_dict() for v in scaling])
    model_output = mlm.ModelOutput.create(
        name="classes", tasks=tasks,
        result=mlm.ResultStructure.create(shape=oshape, dim_order=oorder, data_type=mlm.DataType.FLOAT32),
        description=f"class {card.output} per output channel",
        classes=[Classification.create(value=i, name=name) for i, name in enumerate(card.classes)],
        post_processing_function=None,
    )
    mlm.MLMExtension.ext(item, add_if_missing=True).apply(
        name=card.name, architecture=str(card.extra.get("architecture", card.kind)), tasks=tasks,
        input=[model_input], output=[model_output], framework="ONNX",
        accelerator=mlm.AcceleratorType.AMD64, accelerator_constrained=False,
    )
    props = item.properties
    props.update({
        "gsd": card.resolution,
        "processing:level": card.product_level.upper(),
        "cloudmask:product_level": card.product_level,
        "cloudmask:resolution": card.resolution,
        "cloudmask:kind": card.kind,
        "cloudmask:output": card.output,
        "cloudmask:patch_size": card.patch_size,
    })
    if card.version:
        props["version"] = card.version
    extra = {k: v for k, v in card.extra.items() if k != "architecture"}
    if extra:
        props["cloudmask:extra"] = extra
    asset = pystac.Asset(href=d["onnx"], media_type="application/octet-stream; application=onnx",
                         title=f"{card.name} ONNX graph", roles=["mlm:model"])
    item.add_asset("model", asset)
    mlm.AssetGeneralMLMExtension.ext(asset, add_if_missing=True).artifact_type = "onnx"
    return item.to_dict(include_self_link=False, transform_hrefs=False)


def save_mlm(card: ModelCard, path: Path) -> Path:
    """Write the card as an MLM STAC item JSON file (ONNX href relative to it)."""
    path = Path(path)
    path.write_text(json.dumps(card_to_mlm(card, relative_to=path.parent), indent=2))
    return path


def is_mlm(raw: Any) -> bool:
    """Whether a parsed card file is an MLM STAC item rather than a plain card."""
    return isinstance(raw, Mapping) and raw.get("type") == "Feature" and isinstance(raw.get("properties"), Mapping) \
        and "mlm:input" in raw["properties"]


def _scaling_steps(scaling: Sequence[Any], n_bands: int, where: str) -> list[Step]:
    items = [s for s in scaling if s is not None]
    if not items:
        return []
    kinds = {s.get("type") if isinstance(s, Mapping) else None for s in items}
    if len(kinds) != 1 or len(items) not in (1, n_bands) or len(items) != len(scaling):
        raise ModelCardError(
            f"{where}: value_scaling must use one type for all bands (one object, or one per band); "
            f"got {sorted(map(str, kinds))} over {len(scaling)} entries for {n_bands} bands"
        )
    kind = kinds.pop()

    def col(key: str) -> tuple[float, ...]:
        try:
            return tuple(float(s[key]) for s in items)
        except (KeyError, TypeError, ValueError) as err:
            raise ModelCardError(f"{where}: value_scaling '{kind}' needs '{key}' numbers") from err

    if kind == "z-score":
        return [Standardize(col("mean"), col("stddev"))]
    if kind == "min-max":  # MLM min-max does not clip: (x - min) / (max - min) as a scale
        lo, hi = col("minimum"), col("maximum")
        return [Scale(tuple(1.0 / (h - low) for low, h in zip(lo, hi, strict=True)),
                      tuple(-low / (h - low) for low, h in zip(lo, hi, strict=True)))]
    if kind == "clip":
        return [Clip(col("minimum"), col("maximum"))]
    if kind == "clip-min":
        return [Clip(col("minimum"), None)]
    if kind == "clip-max":
        return [Clip(None, col("maximum"))]
    if kind == "offset":
        return [Scale((1.0,), tuple(-v for v in col("value")))]
    if kind == "scale":
        return [Scale(tuple(1.0 / v for v in col("value")), (0.0,))]
    if kind == "processing" and len(items) == 1 and items[0].get("format") == NORMALISATION_FORMAT:
        return list(from_card(items[0].get("expression"), where).steps)
    raise ModelCardError(
        f"{where}: value_scaling type {kind!r} is not supported; use z-score, min-max, clip, clip-min, clip-max, "
        f"offset, scale, or a pre_processing_function of format {NORMALISATION_FORMAT!r}"
    )


def card_from_mlm(raw: Mapping[str, Any], base: Path, source: str = "MLM item") -> ModelCard:
    """Build a card from an MLM STAC item (as written by :func:`card_to_mlm`, or by other tools).

    Needs ``mlm:input`` (bands), an ``mlm:model`` asset with the ONNX file, and the class of each
    output channel (``classification:classes`` of ``mlm:output``); product level and resolution come
    from ``cloudmask:`` fields, else ``processing:level`` and ``gsd``.
    """
    props = raw.get("properties", {})
    inputs, outputs = props.get("mlm:input") or [], props.get("mlm:output") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelCardError(f"{source}: cloudmask runs models with one mlm:input and one mlm:output, "
                             f"got {len(inputs)} and {len(outputs)}")
    inp, out = inputs[0], outputs[0]
    bands = [b["name"] if isinstance(b, Mapping) else str(b) for b in inp.get("bands", [])]
    assets = [a for a in (raw.get("assets") or {}).values() if "mlm:model" in (a.get("roles") or [])]
    if len(assets) != 1:
        raise ModelCardError(f"{source}: needs exactly one asset with role 'mlm:model' (the ONNX file)")
    onnx_path = (base / str(assets[0]["href"])).resolve()
    if not onnx_path.is_file():
        raise ModelCardError(f"{source}: ONNX file {onnx_path} does not exist; fix the mlm:model asset's href")
    where = f"{source}: mlm:input"
    steps: list[Step] = []
    if inp.get("value_scaling"):
        steps += _scaling_steps(inp["value_scaling"], len(bands), where)
    pre = inp.get("pre_processing_function")
    if pre:
        if not isinstance(pre, Mapping) or pre.get("format") != NORMALISATION_FORMAT:
            raise ModelCardError(f"{where}: pre_processing_function must be of format {NORMALISATION_FORMAT!r} "
                                 f"(a cloudmask normalisation mapping); got {pre!r:.80}")
        steps += list(from_card(pre.get("expression"), where).steps)
    classes = sorted(out.get("classification:classes") or [], key=lambda c: int(c.get("value", 0)))
    if not classes:
        raise ModelCardError(f"{source}: mlm:output needs 'classification:classes' naming each output channel")
    level = str(props.get("cloudmask:product_level") or props.get("processing:level", "")).lower()
    resolution = props.get("cloudmask:resolution", props.get("gsd"))
    if resolution is None:
        raise ModelCardError(f"{source}: give the model's resolution as 'gsd' (metres)")
    shape = (inp.get("input") or {}).get("shape") or []
    kind = str(props.get("cloudmask:kind") or ("pixel" if len(shape) == 2 else "segmentation"))
    patch = int(props.get("cloudmask:patch_size") or (shape[-1] if len(shape) == 4 and shape[-1] > 0 else 256))
    extra = dict(props.get("cloudmask:extra") or {})
    arch = props.get("mlm:architecture")
    if arch and arch != kind:
        extra["architecture"] = arch
    try:
        card = ModelCard(
            name=str(props.get("mlm:name") or raw.get("id") or onnx_path.stem),
            onnx_path=onnx_path,
            bands=tuple(bands),
            product_level=level,  # type: ignore[arg-type]
            resolution=float(resolution),
            normalisation=Normalisation(tuple(steps)),
            patch_size=patch,
            classes=tuple(str(c["name"]) for c in classes),
            output=str(props.get("cloudmask:output", "logits")),  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            version=str(props.get("version", "")),
            description=str(props.get("description", "")),
            extra=extra,
        )
    except (TypeError, ValueError, KeyError) as err:
        raise ModelCardError(f"{source}: {err}") from err
    check_graph(card, source)
    return card


__all__ = ["MLM_SCHEMA", "NORMALISATION_FORMAT", "card_from_mlm", "card_to_mlm", "is_mlm", "save_mlm"]
