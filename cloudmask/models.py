"""Model cards and the model registry.

A *model card* says everything the pipeline needs to feed a model and read its output: the bands it
takes (STAC ``eo:bands`` common names, in input order), the product level it was trained on, the
resolution it expects (metres), how reflectance is normalised, its patch size (pixels) and what its
output channels mean. Built-in cards wrap the four ukis-csmask U-Nets shipped inside the installed
``ukis-csmask`` package; a user model is an ONNX file plus a card file (YAML or JSON).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .builtin.s2cloudless import card as s2cloudless_card
from .card import (  # noqa: F401 - re-exported: the card's own module is cloudmask.card
    KINDS,
    KNOWN_BANDS,
    CardFile,
    ModelCard,
    ModelKind,
    ProductLevel,
    card_problems,
    check_graph,
    graph_output_channels,
    graph_output_op,
)
from .classes import CLASSES, NODATA, ClassTable, canonical, class_names, class_value  # noqa: F401 - re-exported
from .errors import ModelCardError, UnknownModelError
from .mlm import card_from_mlm, is_mlm
from .normalisation import from_card
from .scene import SceneSpec

log = logging.getLogger(__name__)

# The mask contract lives in classes.py; CLASSES (the three-class table) and NODATA stay importable here.
CARD_SUFFIXES = (".yaml", ".yml", ".json")

# ---------------------------------------------------------------------------------------------- registry

#: The ukis-csmask U-Nets (segmentation, 30 m).
BUILTIN = ("ukis-4b-l1c", "ukis-4b-l2a", "ukis-6b-l1c", "ukis-6b-l2a")
#: Example models shipped as card + ONNX in ``cloudmask/data/models/<name>/card.yaml``.
SHIPPED = ("spectral-mlp",)
#: Every built-in model name: the U-Nets, s2cloudless (a pixel model, :mod:`cloudmask.builtin.s2cloudless`)
#: and the shipped example models.
BUILTIN_MODELS = (*BUILTIN, "s2cloudless", *SHIPPED)
#: The pip extra a built-in model needs beyond the base install (``pip install 's2-cloudmask[EXTRA]'``).
MODEL_EXTRAS: dict[str, str] = {"s2cloudless": "s2cloudless"}


def builtin_card(name: str, convert: bool = True) -> ModelCard:
    """The card of a built-in model (``convert=False``: s2cloudless without converting its graph yet)."""
    if name == "s2cloudless":
        return s2cloudless_card(convert_now=convert)
    if name in SHIPPED:
        return load_card_file(Path(str(resources.files("cloudmask").joinpath("data", "models", name, "card.yaml"))))
    return _ukis_card(name)


def _ukis_card(name: str) -> ModelCard:
    try:
        pkg = resources.files("ukis_csmask")
    except ModuleNotFoundError as err:  # pragma: no cover - declared dependency
        raise UnknownModelError(
            f"model '{name}' comes from the ukis-csmask package, which is not installed: "
            "pip install ukis-csmask"
        ) from err
    stem = "model_" + name.removeprefix("ukis-").replace("-", "_")
    onnx_path = Path(str(pkg.joinpath(stem + ".onnx")))
    meta = json.loads(pkg.joinpath(stem + ".json").read_text())
    stats = meta["data"]["dataset_statistics"]
    return ModelCard(
        name=name,
        onnx_path=onnx_path,
        bands=tuple(stats["band_names"]),
        product_level="l1c" if name.endswith("l1c") else "l2a",
        resolution=30.0,
        mean=tuple(float(v) for v in stats["img"][0]),
        std=tuple(float(v) for v in stats["img"][1]),
        patch_size=int(meta["data"]["target_size"][0]),
        classes=("clear", "cloud", "shadow"),
        output="logits",
        version=str(meta["model"]["version"]),
        description=(
            f"ukis-csmask {meta['model']['decoder_name']}/{meta['model']['encoder_name']} "
            f"(DLR, Apache-2.0), {len(stats['band_names'])} bands, {name[-3:].upper()}"
        ),
    )


def list_models() -> list[ModelCard]:
    """Cards of every built-in model (s2cloudless is listed without converting its graph)."""
    return [builtin_card(n, convert=False) for n in BUILTIN_MODELS]


def load_card_file(path: Path) -> ModelCard:
    """Read a card file (YAML or JSON); ``onnx`` is resolved relative to the card."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.safe_load(text) if path.suffix != ".json" else json.loads(text)
    except UnicodeDecodeError as err:
        raise ModelCardError(f"model card {path} is not text (byte {err.start} is not UTF-8): give the YAML or "
                             "JSON card file, not the model or another binary file") from err
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as err:
        raise ModelCardError(f"cannot read model card {path}: {err}") from err
    if not isinstance(raw, dict):
        raise ModelCardError(f"model card {path} must be a mapping of fields (name, onnx, bands, ...)")
    if is_mlm(raw):  # a STAC item with the MLM extension
        return card_from_mlm(raw, base=path.parent, source=str(path))
    return card_from_dict(raw, base=path.parent, source=str(path))


def card_from_dict(raw: Mapping[str, Any], base: Path, source: str = "model card") -> ModelCard:
    """Build a card from its file form (:class:`~cloudmask.card.CardFile`): every problem is reported at once,
    each naming its field and the fix; a misspelt key is an error with a "did you mean"."""
    doc, problems = card_problems(raw)
    norm = None
    if "normalisation" in raw:
        try:
            norm = from_card(raw["normalisation"], source)
            if doc is not None:
                norm.validate(len(doc.bands), f"{source}: normalisation")
        except ModelCardError as err:
            problems.append(str(err).removeprefix(f"{source}: "))
    onnx_path = None
    onnx = doc.onnx if doc is not None else raw.get("onnx")
    if isinstance(onnx, str):
        onnx_path = (base / onnx).resolve()
        if not onnx_path.is_file():
            problems.append(f"ONNX file {onnx_path} does not exist; fix the card's 'onnx' path")
    if problems:
        head = f"{source}: " if len(problems) == 1 else f"{source}: {len(problems)} problems: "
        raise ModelCardError(head + "; ".join(problems))
    assert doc is not None and norm is not None and onnx_path is not None
    fields = doc.model_dump(exclude_unset=True)
    # one channel is P(class) unless the card says the graph gives its logit
    output = doc.output if "output" in fields else ("probabilities" if len(doc.classes) == 1 else "logits")
    if len(doc.classes) == 1 and output == "logits" and graph_output_op(onnx_path) == "Sigmoid":
        log.warning("%s: the graph's one output channel comes out of a Sigmoid, so it is P(%s) already: "
                    "read as output: probabilities (write that in the card)", source, doc.classes[0])
        output = "probabilities"
    try:
        card = ModelCard(
            name=doc.name or onnx_path.stem,
            onnx_path=onnx_path,
            bands=tuple(doc.bands),
            product_level=doc.product_level,  # type: ignore[arg-type]  # checked by CardFile
            resolution=doc.resolution,
            normalisation=norm,
            patch_size=doc.patch_size,
            classes=tuple(doc.classes),
            output=output,  # type: ignore[arg-type]
            kind=doc.kind,  # type: ignore[arg-type]
            version=doc.version,
            description=doc.description,
            extra=_resolve_paths({k: v for k, v in fields.items() if k not in CardFile.card_arguments()}, base),
            threshold=doc.threshold,
        )
    except (TypeError, ValueError) as err:
        raise ModelCardError(f"{source}: {err}") from err
    check_graph(card, source)
    return card


#: Extra card fields that are paths, resolved relative to the card file like ``onnx``.
PATH_FIELDS = ("metis_model",)


def _resolve_paths(extra: dict[str, Any], base: Path) -> dict[str, Any]:
    """``extra`` with each :data:`PATH_FIELDS` value made absolute against the card's directory ``base``."""
    for key in PATH_FIELDS:
        if isinstance(extra.get(key), str) and extra[key]:
            extra[key] = str((base / Path(extra[key]).expanduser()).resolve())
    return extra


def load_model(model: str | Path | ModelCard) -> ModelCard:
    """Resolve a built-in name, a card file, or an ONNX file with a card beside it, to a card.

    For ``model.onnx`` the card is looked up as ``model.yaml``/``model.json``/``card.yaml`` beside it.
    """
    if isinstance(model, ModelCard):
        return model
    name = str(model)
    if name in BUILTIN_MODELS:
        return builtin_card(name)
    path = Path(name).expanduser()
    if path.suffix in CARD_SUFFIXES and path.is_file():
        return load_card_file(path)
    if path.suffix == ".onnx" and path.is_file():
        for cand in [path.with_suffix(s) for s in CARD_SUFFIXES] + [path.parent / "card.yaml"]:
            if cand.is_file():
                return load_card_file(cand)
        raise ModelCardError(
            f"ONNX model {path} has no model card: write {path.with_suffix('.yaml')} "
            "(fields: onnx, bands, product_level, resolution, normalisation; see README)"
        )
    if path.is_dir():
        for cand in (path / "card.yaml", path / "card.json", path / "model.yaml"):
            if cand.is_file():
                return load_card_file(cand)
    raise UnknownModelError(
        f"unknown model '{name}': use one of {', '.join(BUILTIN_MODELS)} (see `cloudmask models`) "
        "or the path of a model card / ONNX file with a card beside it"
    )


def choose_model(model: str | Path | ModelCard | None, spec: SceneSpec) -> ModelCard:
    """Resolve ``model`` for one scene; ``None``/``"auto"`` picks the ukis model of the scene's product level:
    the 6-band one when the scene has both SWIR bands, else the 4-band (blue, green, red, nir) one.

    Callers at the edge (CLI, API, job task) resolve once and pass the card down; a card whose product
    level differs from the scene's is returned with a warning.
    """
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
