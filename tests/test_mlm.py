"""Model cards as STAC MLM items: write, read back, read a foreign item, and refuse what cannot run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cloudmask.errors import ModelCardError
from cloudmask.mlm import MLM_SCHEMA, NORMALISATION_FORMAT, card_from_mlm, card_to_mlm, save_mlm
from cloudmask.models import ModelCard, load_model
from cloudmask.normalisation import from_card


def pixel_onnx(path, bands=4, classes=2):
    """A tiny per-pixel model [N, C] -> [N, K] (MatMul + Softmax)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [bands, classes], np.linspace(-1, 1, bands * classes).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["s"]), helper.make_node("Softmax", ["s"], ["y"], axis=1)],
        "pixel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, bands])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, classes])], [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ukis_card_round_trips_with_z_score(tmp_path):
    base = load_model("ukis-4b-l2a")
    shutil.copy(base.onnx_path, tmp_path / "m.onnx")
    card = base.with_onnx(tmp_path / "m.onnx")
    item = card_to_mlm(card, relative_to=tmp_path)
    props = item["properties"]
    assert item["stac_extensions"] == [MLM_SCHEMA] and item["type"] == "Feature"
    assert item["assets"]["model"]["href"] == "m.onnx" and item["assets"]["model"]["roles"] == ["mlm:model"]
    inp = props["mlm:input"][0]
    assert inp["bands"] == ["blue", "green", "red", "nir"]
    assert inp["input"] == {"shape": [1, 4, 256, 256], "dim_order": ["batch", "channel", "height", "width"],
                            "data_type": "float32"}
    assert inp["value_scaling"][0] == {"type": "z-score", "mean": card.mean[0], "stddev": card.std[0]}
    assert inp["pre_processing_function"] is None
    assert [c["name"] for c in props["mlm:output"][0]["classification:classes"]] == ["clear", "cloud", "shadow"]
    assert props["mlm:tasks"] == ["semantic-segmentation"] and props["gsd"] == 30.0
    path = save_mlm(card, tmp_path / "m.json")
    back = load_model(path)  # load_model reads an MLM item like a card file
    assert (back.bands, back.mean, back.std, back.classes, back.kind, back.product_level, back.resolution) == (
        card.bands, card.mean, card.std, card.classes, card.kind, card.product_level, card.resolution)
    assert back.normalisation == card.normalisation


def test_pixel_card_with_a_chain_uses_pre_processing_function(tmp_path):
    pixel_onnx(tmp_path / "p.onnx")
    norm = from_card([{"type": "minmax", "low": 0.0, "high": 0.5}, {"type": "log1p"}])
    card = ModelCard(name="px", onnx_path=tmp_path / "p.onnx", bands=("blue", "red", "nir", "swir16"),
                     product_level="l1c", resolution=20, normalisation=norm, classes=("clear", "cloud"),
                     output="probabilities", kind="pixel", extra={"postprocess": {"thresholds": {"cloud": 0.3}}})
    item = card_to_mlm(card, relative_to=tmp_path)
    inp = item["properties"]["mlm:input"][0]
    assert inp["value_scaling"] is None
    assert inp["pre_processing_function"] == {"format": NORMALISATION_FORMAT, "expression": norm.to_dict()}
    assert inp["input"]["shape"] == [-1, 4] and inp["input"]["dim_order"] == ["batch", "channel"]
    back = card_from_mlm(json.loads(json.dumps(item)), base=tmp_path)
    assert back.normalisation == norm and back.kind == "pixel" and back.output == "probabilities"
    assert back.extra["postprocess"] == {"thresholds": {"cloud": 0.3}}
    refl = np.full((4, 1), 0.25, np.float32)
    assert np.allclose(back.normalise(refl), np.log1p(0.5))


def test_foreign_item_min_max_and_processing_level(tmp_path):
    pixel_onnx(tmp_path / "f.onnx", bands=2, classes=3)
    item = {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": [MLM_SCHEMA], "id": "foreign",
        "geometry": None, "properties": {
            "datetime": None, "mlm:name": "foreign", "mlm:architecture": "MLP", "gsd": 10,
            "processing:level": "L2A",
            "mlm:input": [{"name": "x", "bands": [{"name": "red"}, "nir"],
                           "input": {"shape": [-1, 2], "dim_order": ["batch", "channel"], "data_type": "float32"},
                           "value_scaling": [{"type": "min-max", "minimum": 0, "maximum": 10000},
                                             {"type": "min-max", "minimum": 1000, "maximum": 5000}]}],
            "mlm:output": [{"name": "y", "classification:classes": [
                {"value": 2, "name": "cloud shadow"}, {"value": 0, "name": "clear"}, {"value": 1, "name": "cloud"}]}],
        },
        "assets": {"weights": {"href": "f.onnx", "roles": ["mlm:model"]}},
    }
    card = card_from_mlm(item, base=tmp_path)
    assert card.kind == "pixel" and card.product_level == "l2a" and card.resolution == 10
    assert card.bands == ("red", "nir") and card.classes == ("clear", "cloud", "cloud shadow")
    assert card.extra["architecture"] == "MLP"
    out = card.normalise(np.array([[5000.0], [3000.0]], np.float32))  # MLM min-max does not clip
    assert out[:, 0] == pytest.approx([0.5, 0.5])


def test_refusals_name_the_fix(tmp_path):
    pixel_onnx(tmp_path / "p.onnx")
    card = ModelCard(name="px", onnx_path=tmp_path / "p.onnx", bands=("blue", "red", "nir", "swir16"),
                     product_level="l1c", resolution=20, mean=(0.1,) * 4, std=(0.2,) * 4,
                     classes=("clear", "cloud"), output="probabilities", kind="pixel")
    item = card_to_mlm(card, relative_to=tmp_path)
    three = json.loads(json.dumps(item))
    three["properties"]["mlm:output"][0]["classification:classes"].append({"value": 2, "name": "shadow"})
    with pytest.raises(ModelCardError, match="ONNX output has 2 channels but the card lists 3 classes"):
        card_from_mlm(three, base=tmp_path)
    odd = json.loads(json.dumps(item))
    odd["properties"]["mlm:input"][0]["pre_processing_function"] = {"format": "python", "expression": "m:f"}
    with pytest.raises(ModelCardError, match=NORMALISATION_FORMAT):
        card_from_mlm(odd, base=tmp_path)
    bare = json.loads(json.dumps(item))
    bare["assets"] = {}
    with pytest.raises(ModelCardError, match="mlm:model"):
        card_from_mlm(bare, base=tmp_path)


def test_mlm_item_is_a_valid_stac_item():
    """The card item validates against the core STAC 1.1.0 item schema (the copies pystac ships, offline)."""
    from importlib import resources
    from pathlib import Path

    import jsonschema
    from referencing import Registry, Resource

    root = Path(str(resources.files("pystac.validation.jsonschemas")))
    core = root / "stac-spec" / "v1.1.0"
    files = {f"https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/{p.name}": p for p in core.glob("*.json")}
    files.update({f"https://geojson.org/schema/{n}.json": root / "geojson" / f"{n}.json" for n in ("Feature", "Geometry")})
    registry = Registry().with_resources(
        [(url, Resource.from_contents(json.loads(p.read_text()))) for url, p in files.items()])
    validator = jsonschema.Draft7Validator(json.loads((core / "item.json").read_text()), registry=registry)
    item = card_to_mlm(load_model("ukis-6b-l1c"))
    assert list(validator.iter_errors(item)) == []
    del item["properties"]["start_datetime"]  # datetime null needs a range: the schema is really checked
    assert list(validator.iter_errors(item))
