"""The OpenVINO CPU backend (issue 26): same masks as ONNX Runtime, precision chosen and reported, int8 gated."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cloudmask
from cloudmask.errors import ConfigError
from cloudmask.models import ModelCard, load_model
from cloudmask.runtime import OnnxRunner, OvConfig, make_runners

from .conftest import shared_dir

pytest.importorskip("openvino")
from cloudmask.runtime import openvino as ovr  # noqa: E402

MLP = Path(cloudmask.__file__).parent / "data" / "models" / "spectral-mlp"
MLP_BANDS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]  # s2cloudless all-bands indices of the MLP's 10 bands
UKIS_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]


@pytest.fixture(autouse=True)
def fresh_openvino(tmp_path, monkeypatch):
    """Each test: its own user cache dir, a new Core and no compiled models left from another test."""
    monkeypatch.setenv("CLOUDMASK_CACHE_DIR", str(tmp_path / "cache"))
    ovr.core.cache_clear()
    ovr._COMPILED.clear()
    yield
    ovr.core.cache_clear()
    ovr._COMPILED.clear()


def _ukis_patch() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(shared_dir("data", "real", "ukis-csmask-patch") / "sentinel2.npz")
    truth = np.zeros(d["msk"].shape[:2], np.uint8)
    truth[d["msk"][..., 0] == 4], truth[d["msk"][..., 0] == 0] = 1, 2
    return d["img"], truth


def _iou(mask: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(((mask == k) & (truth == k)).sum() / ((mask == k) | (truth == k)).sum())


def _tiny_segmenter(tmp_path: Path, bands: tuple[str, ...] = ("blue", "green", "red", "nir")) -> ModelCard:
    """A small real conv net [B, 4, 64, 64] -> [B, 3, 64, 64] (3x3 conv, ReLU, 1x1 conv) with fixed weights."""
    rng = np.random.default_rng(3)
    w1 = rng.normal(0, 0.5, (8, len(bands), 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (3, 8, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3, 64, 64])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return ModelCard(name="tiny-seg", onnx_path=path, bands=bands, product_level="l2a", resolution=10.0,
                     mean=(0.1,) * 4, std=(0.1,) * 4, patch_size=64, classes=("clear", "cloud", "shadow"))


def _real_patches(card: ModelCard, n: int = 8) -> list[np.ndarray]:
    patches, _ = ovr.calibration_patches(card, None)
    return patches[:n]


# ------------------------------------------------------------------------------------- model kinds

@pytest.mark.slow
def test_real_ukis_model_on_the_real_labelled_patch_matches_onnxruntime():
    """The real ukis-6b-l1c model through the whole engine: masks and cloud/shadow IoU as ONNX Runtime's."""
    from cloudmask.inference import predict

    img, truth = _ukis_patch()
    ours = predict(img, model="ukis-6b-l1c", bands=UKIS_BANDS, backend="openvino", precision="f32")
    ref = predict(img, model="ukis-6b-l1c", bands=UKIS_BANDS)
    assert (ours == ref).mean() >= 0.999
    for k in (1, 2):
        assert abs(_iou(ours, truth, k) - _iou(ref, truth, k)) <= 0.005
    assert _iou(ours, truth, 1) > 0.7  # the model works on it at all (0.748 with ONNX Runtime)


def test_segmentation_scores_equal_onnxruntime_on_real_patches(tmp_path):
    card = _tiny_segmenter(tmp_path)
    (ov,) = make_runners(card, "openvino", instances=1, batch=2, ov=OvConfig(precision="f32"))
    ort = OnnxRunner(card, batch=2)
    assert ov.input_shape == ort.input_shape == (2, 4, 64, 64)
    assert (ov.backend, ov.precision) == ("openvino", "f32")
    for a, b in zip(*[iter(p[:, :64, :64] for p in _real_patches(card, 4))] * 2, strict=True):
        x = np.stack([a, b])
        got, want = ov.run(x), ort.run(x)
        assert got.dtype == np.float32 and got.shape == (2, 3, 64, 64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert got is not ov.run(x)  # a new array each call (the blender reads it later)


def test_pixel_model_on_real_pixels_equals_onnxruntime():
    card = load_model(str(MLP / "card.yaml"))
    img = np.load(shared_dir("data", "real", "s2cloudless-l1c-arrays") / "input_arrays.npz")["s2_im"][0]
    x = card.normalise(img[:, :, MLP_BANDS].reshape(-1, 10)[:4096].T.copy()).T.copy()
    (ov,) = make_runners(card, "openvino", instances=1, block=4096)
    (ort,) = make_runners(card, "onnxruntime", instances=1, block=4096)
    assert ov.input_shape == (4096, 10)
    got, want = ov.run(x), ort.run(x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3) if ov.precision == "f32" else None
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.995


def test_patch_classifier_equals_onnxruntime(tmp_path):
    w = np.zeros((4, 2), np.float32)
    w[0, 1] = 10.0
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "W", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "pc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 2])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "pc.onnx"))
    card = ModelCard(name="pc", onnx_path=tmp_path / "pc.onnx", bands=("blue", "green", "red", "nir"),
                     product_level="l2a", resolution=30.0, mean=(0.1,) * 4, std=(0.05,) * 4, patch_size=32,
                     classes=("clear", "cloud"), kind="patch-classifier")
    (ov,) = make_runners(card, "openvino", instances=1, batch=3, ov=OvConfig(precision="f32"))
    x = np.random.default_rng(0).normal(size=(3, 4, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(ov.run(x), OnnxRunner(card, batch=3).run(x), rtol=1e-4, atol=1e-4)


def test_tree_ensemble_falls_back_to_onnxruntime_with_a_warning(tmp_path, caplog):
    """s2cloudless's kind of graph (ai.onnx.ml tree ensemble): OpenVINO cannot read it; ONNX Runtime runs it."""
    node = helper.make_node(
        "TreeEnsembleClassifier", ["x"], ["label", "probabilities"], domain="ai.onnx.ml",
        classlabels_int64s=[0, 1], nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_values=[0.5, 0.0, 0.0], nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_truenodeids=[1, 0, 0],
        nodes_falsenodeids=[2, 0, 0], class_treeids=[0, 0], class_nodeids=[1, 2], class_ids=[1, 1],
        class_weights=[0.0, 1.0], post_transform="NONE")
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "trees.onnx"))
    card = ModelCard(name="trees", onnx_path=tmp_path / "trees.onnx", bands=("blue", "red"), product_level="l1c",
                     resolution=10.0, mean=(0.0, 0.0), std=(1.0, 1.0), patch_size=1, classes=("clear", "cloud"),
                     kind="pixel", output="probabilities")
    with caplog.at_level(logging.WARNING, "cloudmask.runtime.openvino"):
        runs = make_runners(card, "openvino", instances=1, block=16)
    assert isinstance(runs[0], OnnxRunner) and runs[0].backend == "onnxruntime"
    assert "TreeEnsembleClassifier" in caplog.text and "runs on ONNX Runtime" in caplog.text


# ------------------------------------------------------------------------------------- precision

def test_auto_precision_follows_the_cpu(tmp_path, caplog):
    card = _tiny_segmenter(tmp_path)
    has_bf16 = "BF16" in ovr.cpu_capabilities()
    (auto,) = make_runners(card, "openvino", instances=1)
    assert auto.precision == ("bf16" if has_bf16 else "f32")
    with caplog.at_level(logging.WARNING, "cloudmask.runtime.openvino"):
        (bf16,) = make_runners(card, "openvino", instances=1, ov=OvConfig(precision="bf16"))
    assert bf16.precision == ("bf16" if has_bf16 else "f32")
    assert has_bf16 or "reports no BF16" in caplog.text  # asked bf16 on a CPU without it: said so


@pytest.mark.slow
def test_int8_is_accepted_or_refused_by_its_agreement_and_cached(tmp_path, caplog, monkeypatch):
    """int8 on the real demo chips: kept when its masks agree with f32, refused loudly when not; the
    quantised model and its agreement are cached on disk (no second quantisation)."""
    card = _tiny_segmenter(tmp_path)
    (q,) = make_runners(card, "openvino", instances=1, ov=OvConfig(precision="int8", min_agreement=0.0))
    assert q.precision == "int8" and 0.9 < q.agreement <= 1.0
    cached = list((tmp_path / "cache" / "openvino" / "int8").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["agreement"] == q.agreement
    x = np.stack([p[:, :64, :64] for p in _real_patches(card, 1)])
    (f32,) = make_runners(card, "openvino", instances=1, ov=OvConfig(precision="f32"))
    assert (q.run(x).argmax(1) == f32.run(x).argmax(1)).mean() >= 0.9

    import nncf

    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: pytest.fail("quantised again despite the cache"))
    with caplog.at_level(logging.WARNING, "cloudmask.runtime.openvino"):
        (refused,) = make_runners(card, "openvino", instances=1, ov=OvConfig(precision="int8", min_agreement=1.01))
    assert refused.precision in ("f32", "bf16")
    assert "int8 refused" in caplog.text and "patches of the real demo chips" in caplog.text


def test_int8_needs_patches_with_the_models_bands(tmp_path):
    card = _tiny_segmenter(tmp_path, bands=("coastal", "green", "red", "nir"))
    with pytest.raises(ConfigError, match="--calibration DIR"):
        make_runners(card, "openvino", instances=1, ov=OvConfig(precision="int8"))


def test_model_inputs_turn_patches_into_pixel_blocks():
    patches = [np.full((3, 4, 4), k, np.float32) for k in range(3)]  # 48 pixels
    blocks = ovr.model_inputs(patches, (20, 3))
    assert [b.shape for b in blocks] == [(20, 3)] * 3 and blocks[0][0].tolist() == [0, 0, 0]
    assert ovr.model_inputs(patches, (2, 3, 4, 4))[1].shape == (2, 3, 4, 4)
    with pytest.raises(ConfigError, match="patch size"):
        ovr.model_inputs(patches, (1, 3, 8, 8))


def test_compiled_once_per_process_and_cached_on_disk(tmp_path):
    card = _tiny_segmenter(tmp_path)
    a = make_runners(card, "openvino", instances=2, ov=OvConfig(precision="f32"))
    b = make_runners(card, "openvino", instances=2, ov=OvConfig(precision="f32"))
    assert a[0]._compiled is a[1]._compiled is b[0]._compiled  # one compiled model, one request per runner
    assert any((tmp_path / "cache" / "openvino").glob("*.blob"))  # OpenVINO's CACHE_DIR under the user cache


# ------------------------------------------------------------------------------------- reported

@pytest.mark.slow
def test_item_and_stats_record_backend_and_precision(tmp_path):
    from click.testing import CliRunner

    from cloudmask.cli import main
    from cloudmask.sample import demo_catalog

    stats = tmp_path / "stats.json"
    res = CliRunner().invoke(main, ["run", "--stac", str(demo_catalog()), "--limit", "1", "--out", str(tmp_path / "o"),
                                    "--model", "ukis-4b-l2a", "--backend", "openvino", "--precision", "f32",
                                    "--no-quicklook", "--stats-json", str(stats)])
    assert res.exit_code == 0, res.output
    scene = json.loads(stats.read_text())["scenes"][0]
    assert (scene["backend"], scene["precision"]) == ("openvino", "f32")
    (item,) = (tmp_path / "o" / "items").glob("*.json")
    props = json.loads(item.read_text())["properties"]
    assert props["cloudmask:precision"] == "f32" and "backend:openvino" in props["processing:software"]
    assert "on openvino (f32)" in props["processing:lineage"]


def test_precision_without_openvino_is_refused(tmp_path, sample_catalog):
    from click.testing import CliRunner

    from cloudmask.cli import main
    from cloudmask.jobs.spec import spec_from_dict

    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "o"),
                                    "--precision", "int8"])
    assert res.exit_code == 2 and "--backend openvino" in res.output
    with pytest.raises(ConfigError, match="backend = \"openvino\""):
        spec_from_dict({"stac": str(sample_catalog), "output": "o", "precision": "int8"}, base=tmp_path)
    with pytest.raises(ConfigError, match="'precision'"):
        spec_from_dict({"stac": str(sample_catalog), "output": "o", "backend": "openvino", "precision": "fp8"},
                       base=tmp_path)
    spec = spec_from_dict({"stac": str(sample_catalog), "output": "o", "backend": "openvino", "precision": "f32"},
                          base=tmp_path)
    assert (spec.backend, spec.precision) == ("openvino", "f32")
    with pytest.raises(ConfigError, match="unknown"):
        OvConfig(precision="fp8")
