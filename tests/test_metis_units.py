"""Metis toolchain on tiny synthetic graphs: rules, graph passes, check positions, calibration, CLI."""

from __future__ import annotations

import importlib.util
import json
import py_compile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cloudmask.errors import ConfigError
from cloudmask.metis import graph as G
from cloudmask.metis.calibration import (
    CalibrationPatch,
    allocate,
    calibration_set,
    class_mix,
    load_calibration,
    stratum,
)
from cloudmask.metis.check import check, check_model
from cloudmask.metis.cli import metis
from cloudmask.metis.rules import canonical, derive_rules, load_rules, packaged_rules_dict
from cloudmask.models import ModelCard

ort = pytest.importorskip("onnxruntime")

BANDS = ("blue", "green", "red", "nir")


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def _fp16_model(softmax: bool = True, dynamic: bool = True) -> onnx.ModelProto:
    """A ukis-like graph: dynamic batch, float16 compute via Casts, a Pad before a Conv, Softmax at the end."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float16), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (3, 8, 3, 3)).astype(np.float16), "w2")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    zero = helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float16)))
    nodes = [
        helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16),
        zero,
        helper.make_node("Pad", ["x16", "pads", "zero"], ["p"], mode="constant"),
        helper.make_node("Conv", ["p", "w1"], ["c1"], kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Cast", ["c2"], ["logits" if softmax else "output"], to=TensorProto.FLOAT),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    batch: str | int = "batch" if dynamic else 1
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [w1, w2, pads],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture()
def tiny_card(tmp_path: Path) -> ModelCard:
    path = tmp_path / "tiny.onnx"
    onnx.save(_fp16_model(), str(path))
    return ModelCard(name="tiny", onnx_path=path, bands=BANDS, product_level="l1c", resolution=30.0,
                     mean=(0.2,) * 4, std=(0.1,) * 4, patch_size=16, output="probabilities")


# ----------------------------------------------------------------------------------------------- rules

def test_packaged_rules_load_and_are_not_a_verbatim_copy() -> None:
    raw = packaged_rules_dict()
    assert raw["schema"] == "cloudmask.metis-ops/1"
    assert "onnx-ops.json" in raw["source"]["facts"] and "voyager-sdk" in raw["source"]["docs"]
    rules = load_rules()
    assert rules.batch == 1 and rules.opset_max == 17
    assert rules.ops["Relu"].when == "always" and rules.ops["Conv"].when == "conditional"
    assert "Shape" not in rules.ops and rules.host_only["Softmax"].startswith("outside")
    assert "level" not in json.dumps(raw["ops"])


def test_derive_rules_schema() -> None:
    shared = {
        "what": "Operators ... for ONNX opsets 14-17 ...",
        "source": "voyager-sdk docs",
        "ops": {"Relu": {"level": "supported", "since_opset": 14},
                "Clip": {"level": "constrained", "since_opset": 13, "any_of": ["min==0 and max==6"]},
                "Squeeze": {"level": "constrained", "since_opset": 13}},
        "not_accelerated_examples": ["Shape", "MatMul (outside YOLO attention)"],
    }
    d = derive_rules(shared)
    assert d["model"] == {"opset_min": 14, "opset_max": 17, "batch": 1, "static_shapes": True}
    assert d["ops"]["Clip"] == {"when": "conditional", "min_opset": 13, "any_of": ["min == 0 and max == 6"]}
    assert d["ops"]["Squeeze"]["when"] == "undocumented" and d["ops"]["Relu"]["when"] == "always"
    assert d["host_only"] == {"Shape": "always", "MatMul": "outside YOLO attention"}


def test_canonical_conditions_ignore_formatting_and_refuse_dunders() -> None:
    assert canonical("a==1  and b ==(1,2)") == canonical("a == 1 and b == (1, 2)")
    with pytest.raises(ValueError):
        canonical("x.__class__")


# ----------------------------------------------------------------------------------------- graph passes

def test_pad_folds_into_conv_and_identity_cast_goes() -> None:
    m = _fp16_model(softmax=False, dynamic=False)
    x = np.random.default_rng(1).normal(size=(1, 4, 16, 16)).astype(np.float32)
    G.float16_to_float32(m)
    G.constants_to_initializers(m)
    ref = _run(m, x)
    assert G.remove_identity_casts(m) == 2
    assert G.fold_pads_into_convs(m) == 1
    ops = [n.op_type for n in m.graph.node]
    assert "Pad" not in ops and "Cast" not in ops
    assert [a.ints for a in m.graph.node[0].attribute if a.name == "pads"][0] == [1, 1, 1, 1]
    assert m.graph.output[0].name == "output"
    np.testing.assert_allclose(_run(m, x), ref, atol=1e-5)


def test_export_of_a_tiny_fp16_graph(tiny_card: ModelCard, tmp_path: Path) -> None:
    from cloudmask.metis.export import export
    from cloudmask.models import load_model

    pytest.importorskip("onnxsim")
    res = export(tiny_card, tmp_path / "out", cores="batch4")
    m = onnx.load(str(res.onnx_path))
    ops = {n.op_type for n in m.graph.node}
    assert ops <= {"Conv", "Relu"}, ops
    assert all(t.data_type == TensorProto.FLOAT for t in m.graph.initializer)
    assert res.input_shape == (1, 4, 16, 16)
    card = load_model(res.card_path)
    assert card.output == "logits" and card.extra["metis"]["cores"] == "batch4"
    cfg = json.loads(res.config_path.read_text())
    assert cfg["compiler"] == {"aipu_cores_used": 4, "resources_used": 1.0, "multicore_mode": "batch"}
    x = np.random.default_rng(2).normal(size=(1, 4, 16, 16)).astype(np.float32)
    logits = _run(m, x)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(1, keepdims=True), _run(_fp16_model(), x), atol=5e-3)
    assert check(res.onnx_path).ok
    single = json.loads(export(tiny_card, tmp_path / "s").config_path.read_text())
    assert single["compiler"] == {"aipu_cores_used": 1, "resources_used": 0.25}
    with pytest.raises(ConfigError):
        export(tiny_card, tmp_path / "bad", cores="dual")


def test_generated_compile_script_is_import_clean(tiny_card: ModelCard, tmp_path: Path) -> None:
    from cloudmask.metis.export import export

    pytest.importorskip("onnxsim")
    res = export(tiny_card, tmp_path / "out")
    py_compile.compile(str(res.compile_script), doraise=True)
    spec = importlib.util.spec_from_file_location("metis_compile_script", res.compile_script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports numpy only
    calib = tmp_path / "calib"
    patches = [CalibrationPatch("s", (0, 0), np.zeros((4, 16, 16), np.float32), 0.0) for _ in range(3)]
    calibration_set(patches, calib, res.card, samples=3)
    data = mod.CalibrationSet(calib, [1, 4, 16, 16])
    assert len(data) == 3 and all(x.shape == (1, 4, 16, 16) for x in data)
    assert mod.load_config(res.config_path)["cores"] == "single"
    if importlib.util.find_spec("axelera") is None:
        assert mod.main(["--calibration", str(calib)]) == 2  # explains how to get the SDK


# ------------------------------------------------------------------------------------------------ check

def _chain(ops: list[str], opset: int = 17, batch: int | str = 1) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes, prev = [], "input"
    for i, op in enumerate(ops):
        out = "output" if i == len(ops) - 1 else f"t{i}"
        if op == "Conv":
            nodes.append(helper.make_node("Conv", [prev, "w"], [out], kernel_shape=[1, 1], name=f"n{i}"))
        elif op == "Softmax":
            nodes.append(helper.make_node("Softmax", [prev], [out], axis=1, name=f"n{i}"))
        else:
            nodes.append(helper.make_node(op, [prev], [out], name=f"n{i}"))
        prev = out
    g = helper.make_graph(nodes, "chain",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4, 8, 8])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_check_positions_head_middle_tail() -> None:
    r = check_model(_chain(["Erf", "Conv", "Erf", "Conv", "Softmax"]))
    pos = {n.name: (n.position, n.violations[0].rule) for n in r.violations}
    assert pos == {"n0": ("head", "unsupported_op"), "n2": ("middle", "unsupported_op"),
                   "n4": ("tail", "host_only")}
    assert not r.compilable and not r.ok
    table = {row.op: row for row in r.table()}
    assert table["Conv"].accelerated == 2 and table["Erf"].positions == {"head": 1, "middle": 1}
    edge_only = check_model(_chain(["Erf", "Conv", "Relu", "Softmax"]))
    assert edge_only.compilable and not edge_only.ok


def test_check_model_level_rules() -> None:
    r = check_model(_chain(["Conv", "Relu"], opset=18, batch="N"))
    rules = {v.rule for v in r.model_violations}
    assert rules == {"opset", "batch", "static_shapes"}
    assert not r.compilable
    assert {n.op for n in r.nodes if n.accelerated} == {"Conv", "Relu"}  # batch pinned for op conditions


def test_check_attribute_conditions() -> None:
    m = _chain(["Conv", "Relu"])
    conv = m.graph.node[0]
    conv.attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    r = check_model(m)
    (bad,) = r.violations
    assert bad.op == "Conv" and bad.violations[0].rule == "all_of" and "auto_pad" in bad.violations[0].detail


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(_chain(["Conv", "Relu", "Softmax"]), str(good))
    onnx.save(_chain(["Conv", "Erf", "Conv"]), str(bad))
    runner = CliRunner()
    ok = runner.invoke(metis, ["check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "Softmax" in ok.output and "tail" in ok.output
    res = runner.invoke(metis, ["check", str(bad)])
    assert res.exit_code == 1 and "NOT compilable" in res.output
    js = runner.invoke(metis, ["check", "--json", str(bad)])
    assert json.loads(js.output)["compilable"] is False


def test_cli_calibration_needs_a_catalogue(tmp_path: Path) -> None:
    res = CliRunner().invoke(metis, ["calibration", "--stac", str(tmp_path / "none.json"), "--model", "ukis-6b-l1c",
                                     "--out", str(tmp_path / "c")])
    assert res.exit_code == 4 and "does not exist" in res.output  # CatalogError


# ------------------------------------------------------------------------------------------ calibration

def _card(tmp_path: Path) -> ModelCard:
    path = tmp_path / "dummy.onnx"
    path.write_bytes(b"")
    return ModelCard(name="dummy", onnx_path=path, bands=BANDS, product_level="l2a", resolution=10.0,
                     mean=(0.0,) * 4, std=(1.0,) * 4, patch_size=16)


def test_allocate_shares_evenly_and_redistributes() -> None:
    assert allocate({"a": 100, "b": 100, "c": 100}, 9) == {"a": 3, "b": 3, "c": 3}
    got = allocate({"a": 1, "b": 100, "c": 0}, 10)
    assert got == {"a": 1, "b": 9, "c": 0}
    assert sum(allocate({"a": 2, "b": 3}, 10).values()) == 5


def test_class_mix_and_strata(tmp_path: Path) -> None:
    card = _card(tmp_path)
    x = np.zeros((4, 4, 4), np.float32)
    x[0] = 0.5          # blue: thick where cloudy
    x[0, :, :2] = 0.1   # thin on the left
    x[1], x[3] = 0.3, 0.05  # green > nir: water where clear
    scores = np.zeros((3, 4, 4), np.float32)
    scores[1, :2] = 5  # top half cloud
    scores[2, 3] = 5   # last row shadow
    mix = class_mix(x, scores, card)
    assert mix == pytest.approx({"clear_land": 0.0, "water": 0.25, "thick_cloud": 0.25, "thin_cloud": 0.25,
                                 "shadow": 0.25})
    assert stratum(mix, 0.0) == "shadow"
    assert stratum(mix, 0.5) == "edge"
    assert stratum({"clear_land": 1.0, "water": 0, "thick_cloud": 0, "thin_cloud": 0, "shadow": 0}, 0) == "clear_land"


def test_calibration_set_is_stratified_bounded_and_deterministic(tmp_path: Path) -> None:
    card = _card(tmp_path)
    rng = np.random.default_rng(0)

    def patches() -> list[CalibrationPatch]:
        out = []
        for k in range(60):
            x = np.zeros((4, 16, 16), np.float32)
            x[0], x[1], x[3] = 1.0, 0.1, 0.3  # bright blue (thick cloud if cloudy), no water
            x[2] = rng.normal(size=(16, 16))
            x[0, 0, 0] = k % 3  # the fake model reads the class from here
            out.append(CalibrationPatch(f"scene{k // 20}", (k, 0, 16, 16), x, 1.0 if k == 59 else 0.0))
        return out

    def fake(batch: np.ndarray) -> np.ndarray:
        cls = int(batch[0, 0, 0, 0])
        s = np.zeros((1, 3, 16, 16), np.float32)
        s[0, cls] = 1.0
        return s

    data = patches()
    manifest = json.loads(calibration_set(data, tmp_path / "a", card, runner=fake, samples=12).read_text())
    assert manifest["samples"] == 12 and manifest["skipped_nodata"] == 1
    kept = {s: v["kept"] for s, v in manifest["strata"].items() if v["kept"]}
    assert kept == {"clear_land": 4, "thick_cloud": 4, "shadow": 4}
    assert not (tmp_path / "a" / ".staging").exists()
    items = load_calibration(tmp_path / "a")
    assert all(x.shape == (1, 4, 16, 16) and x.dtype == np.float32 for _, x in items)
    assert {"scene_id", "window", "class_mix", "stratum", "nodata_fraction"} <= set(items[0][0])
    again = json.loads(calibration_set(data, tmp_path / "b", card, runner=fake, samples=12).read_text())
    assert [i["window"] for i in again["items"]] == [i["window"] for i in manifest["items"]]
    with pytest.raises(ConfigError):
        calibration_set([("s", None, np.zeros((3, 16, 16), np.float32), 0.0)], tmp_path / "c", card, runner=fake)
