"""Issue 20, export half: user models as exporters leave them -> compile-ready Metis graphs whose masks
equal the originals. The models are built with onnx.helper (tests/user_models.py): an opset-18 pixel MLP
over the 13 L1C bands with Sub/Div inside the graph, a one-channel sigmoid pixel model and a 64-px patch
classifier (Conv/Relu/MaxPool/GlobalAveragePool/Flatten/Gemm)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from cloudmask.errors import ModelCardError, ModelError
from cloudmask.inference import predict_array
from cloudmask.metis.check import check
from cloudmask.metis.export import export
from cloudmask.models import BUILTIN, NODATA, load_model

from . import user_models as um

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxsim")

MLP_DIR = Path(__file__).resolve().parents[1] / "cloudmask" / "data" / "models" / "spectral-mlp"


def _session(path: Path):  # noqa: ANN202 - onnxruntime session
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _pixels(n: int = 65_536, seed: int = 0) -> np.ndarray:
    """Reflectance-like spectra ``(n, 13)``: clear (dark) and cloudy (bright) pixels."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.25, (n, 13)).astype(np.float32)
    x[: n // 2] += rng.uniform(0.2, 0.6, (n // 2, 1)).astype(np.float32)
    return x


def _scene(h: int = 600, w: int = 650, seed: int = 2) -> np.ndarray:
    """``(13, h, w)`` reflectance with a bright (cloudy) lower half, a darker right part and a nodata corner."""
    rng = np.random.default_rng(seed)
    refl = rng.uniform(0.0, 0.2, (13, h, w)).astype(np.float32)
    refl[:, h // 2 :] += rng.uniform(0.3, 0.5, (13, 1, 1)).astype(np.float32)
    refl[:, :, w // 2 :] *= 0.6
    refl[:, : h // 6, : w // 4] = np.nan
    return refl


def _assert_compile_ready(onnx_path: Path) -> None:
    report = check(onnx_path)
    d = report.to_dict()
    assert report.compilable and report.ok, report.format()
    assert d["violations"] == [] and d["model_violations"] == [] and report.opset <= 17
    assert not {n.op_type for n in onnx.load(str(onnx_path)).graph.node} & {"Sub", "Div", "Flatten", "Reshape",
                                                                             "Shape", "Gather", "Gemm", "MatMul"}


# ------------------------------------------------------------------------------ pixel MLP, opset 18


@pytest.mark.parametrize("variant", [{}, {"nc11": True}, {"nc11": True, "reshape": "torch"}, {"softmax": True}])
def test_opset18_mlp_with_normalisation_in_graph_exports_compile_ready_and_equal(tmp_path, variant):
    src = um.pixel_mlp(tmp_path / "mlp.onnx", **variant)
    assert onnx.load(str(src)).opset_import[0].version == 18
    res = export(load_model(um.card(src, kind="pixel")), tmp_path / "out")
    _assert_compile_ready(res.onnx_path)
    assert res.passes["preprocessing_folded"] == 2 and res.input_shape == (1, 13, 256, 256)
    assert onnx.load(str(res.onnx_path)).opset_import[0].version == 17
    x = _pixels()
    want = _session(src).run(None, {"x": x.reshape(-1, 13, 1, 1) if variant.get("nc11") else x})[0]
    got = _session(res.onnx_path).run(None, {"x": x.T.reshape(1, 13, 256, 256).copy()})[0]
    got = got.reshape(got.shape[1], -1).T
    if variant.get("softmax"):  # the export leaves the softmax to the host: compare probabilities
        e = np.exp(got - got.max(axis=1, keepdims=True))
        got = e / e.sum(axis=1, keepdims=True)
    # folding the normalisation into the first layer: exact to 1e-5 (relative to the logits' size)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_trailing_softmax_and_argmax_run_on_the_host(tmp_path):
    src = um.pixel_mlp(tmp_path / "mlp.onnx", softmax=True)
    um.recentre(src, _pixels(), "b3")
    m = onnx.load(str(src))
    m.graph.node.append(helper.make_node("ArgMax", ["y"], ["cls"], axis=1, keepdims=0))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("cls", onnx.TensorProto.INT64, ["N"]))
    onnx.save(m, str(tmp_path / "argmax.onnx"))
    res = export(load_model(um.card(tmp_path / "argmax.onnx", kind="pixel")), tmp_path / "out")
    _assert_compile_ready(res.onnx_path)
    assert {n.op_type for n in onnx.load(str(res.onnx_path)).graph.node} == {"Conv", "Relu"}
    assert res.card.output == "logits"
    refl = _scene(100, 80)
    valid = ~np.isnan(refl).any(axis=0)
    want = _session(tmp_path / "argmax.onnx").run(None, {"x": refl[:, valid].T.copy()})[0]
    classes, _, _ = predict_array(refl, load_model(res.card_path))
    assert 0.05 < want.mean() < 0.95 and (classes[valid] == want).mean() >= 0.9999


def test_exported_mlp_masks_equal_the_original(tmp_path):
    src = um.pixel_mlp(tmp_path / "mlp.onnx", nc11=True)
    refl = _scene()
    um.recentre(src, _pixels().reshape(-1, 13, 1, 1), "b3")
    original = load_model(um.card(src, kind="pixel"))
    res = export(original, tmp_path / "out")
    a, _, sa = predict_array(refl, original)
    b, _, sb = predict_array(refl, load_model(res.card_path))
    valid = a != NODATA
    assert 0.2 < (a[valid] == 1).mean() < 0.8  # the mask compares decisions, not a constant
    assert (a == b).mean() >= 0.9999
    assert sb.calls == math.ceil(valid.sum() / 65_536)


def test_batchnorm_before_the_first_layer_is_folded(tmp_path):
    """BatchNormalization of an [N, C, 1, 1] input, Flatten, then MatMul + Add: all folded into one Conv."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in {
        "s": rng.uniform(0.5, 2, 13), "b": rng.normal(0, 1, 13), "m": um.MEAN, "v": um.STD ** 2,
        "w": rng.normal(0, 1, (13, 2)), "bias": rng.normal(0, 1, 2)}.items()]
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["n"], epsilon=1e-5),
             helper.make_node("Flatten", ["n"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["y"])]
    graph = helper.make_graph(nodes, "bn", [helper.make_tensor_value_info("x", 1, ["N", 13, 1, 1])],
                              [helper.make_tensor_value_info("y", 1, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "bn.onnx"))
    res = export(load_model(um.card(tmp_path / "bn.onnx", kind="pixel")), tmp_path / "out", fold=(64, 64))
    assert [n.op_type for n in onnx.load(str(res.onnx_path)).graph.node] == ["Conv"]
    x = _pixels(4096)
    want = _session(tmp_path / "bn.onnx").run(None, {"x": x.reshape(-1, 13, 1, 1)})[0]
    got = _session(res.onnx_path).run(None, {"x": x.T.reshape(1, 13, 64, 64).copy()})[0].reshape(2, -1).T
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_pixel_model_of_1x1_convs_with_a_final_flatten(tmp_path):
    """[N, 13, 1, 1] -> Sub/Div -> 1x1 Conv -> Relu -> 1x1 Conv -> Flatten: the Convs stay, the Flatten goes."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in {
        "m": um.MEAN.reshape(1, 13, 1, 1), "s": um.STD.reshape(1, 13, 1, 1), "w1": rng.normal(0, 0.5, (16, 13, 1, 1)),
        "b1": rng.normal(0, 0.1, 16), "w2": rng.normal(0, 0.5, (2, 16, 1, 1))}.items()]
    nodes = [helper.make_node("Sub", ["x", "m"], ["a"]), helper.make_node("Div", ["a", "s"], ["n"]),
             helper.make_node("Conv", ["n", "w1", "b1"], ["h"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["o"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["o"], ["y"])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", 1, ["N", 13, 1, 1])],
                              [helper.make_tensor_value_info("y", 1, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "convs.onnx"))
    res = export(load_model(um.card(tmp_path / "convs.onnx", kind="pixel")), tmp_path / "out", fold=(64, 64))
    _assert_compile_ready(res.onnx_path)
    assert [n.op_type for n in onnx.load(str(res.onnx_path)).graph.node] == ["Conv", "Relu", "Conv"]
    x = _pixels(4096)
    want = _session(tmp_path / "convs.onnx").run(None, {"x": x.reshape(-1, 13, 1, 1)})[0]
    got = _session(res.onnx_path).run(None, {"x": x.T.reshape(1, 13, 64, 64).copy()})[0].reshape(2, -1).T
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, float(np.abs(want).max()))


def test_opset_that_cannot_be_converted_is_refused_naming_the_op(tmp_path):
    src = um.pixel_mlp(tmp_path / "mlp.onnx")
    m = onnx.load(str(src))
    next(n for n in m.graph.node if n.op_type == "Relu").op_type = "Mish"  # new in opset 18: no opset-17 form
    onnx.save(m, str(tmp_path / "mish.onnx"))
    with pytest.raises(ModelError, match=r"opset 18 -> 17 conversion failed at Mish .*re-export the model with opset 17"):
        export(load_model(um.card(tmp_path / "mish.onnx", kind="pixel")), tmp_path / "out")


# ------------------------------------------------------------------------------ one-channel sigmoid


def test_one_channel_card_is_defined_and_validated(tmp_path):
    src = um.pixel_mlp(tmp_path / "s.onnx", outputs=1, sigmoid=True)
    card = load_model(um.card(src, kind="pixel", classes=("cloud",)))
    assert card.one_channel and card.output == "probabilities" and card.decision_threshold == 0.5
    assert load_model(um.card(src, kind="pixel", classes=("cloud",), threshold=0.7)).decision_threshold == 0.7
    # a card that says logits for a Sigmoid output would apply the sigmoid twice: read as probabilities
    assert load_model(um.card(src, kind="pixel", classes=("cloud",), output="logits")).output == "probabilities"
    with pytest.raises(ModelCardError, match="other than clear"):
        load_model(um.card(src, kind="pixel", classes=("clear",)))
    with pytest.raises(ModelCardError, match="between 0 and 1"):
        load_model(um.card(src, kind="pixel", classes=("cloud",), threshold=1.5))
    two = um.pixel_mlp(tmp_path / "two.onnx")
    with pytest.raises(ModelCardError, match="'threshold' is for one-channel models"):
        load_model(um.card(two, kind="pixel", threshold=0.5))
    assert card.with_onnx(src, threshold=0.6).to_dict()["threshold"] == 0.6


@pytest.mark.parametrize("threshold", [None, 0.7])
def test_sigmoid_pixel_model_mask_is_p_above_threshold_exactly(tmp_path, threshold):
    """Through the engine on CPU, against a numpy reference: cloud where P > threshold, else clear (the old
    code softmaxed the single channel: 100 % cloud)."""
    src = um.pixel_mlp(tmp_path / "s.onnx", outputs=1, sigmoid=True, nc11=True)
    um.recentre(src, _pixels().reshape(-1, 13, 1, 1), "b3")
    extra = {} if threshold is None else {"threshold": threshold}
    card = load_model(um.card(src, kind="pixel", classes=("cloud",), **extra))
    refl = _scene(300, 200)
    classes, probs, _ = predict_array(refl, card, config=None)
    valid = ~np.isnan(refl).any(axis=0)
    p = _session(src).run(None, {"x": refl[:, valid].T.reshape(-1, 13, 1, 1).copy()})[0][:, 0]
    expected = np.full(valid.shape, NODATA, np.uint8)
    expected[valid] = (p > (threshold or 0.5)).astype(np.uint8)
    assert 0.05 < (p > (threshold or 0.5)).mean() < 0.95
    assert np.array_equal(classes, expected)
    # the exported (folded) graph keeps its Sigmoid (accelerated) and gives the same mask
    res = export(card, tmp_path / "out")
    _assert_compile_ready(res.onnx_path)
    exported = load_model(res.card_path)
    assert exported.classes == ("cloud",) and exported.output == "probabilities"
    assert exported.threshold == threshold
    folded, _, _ = predict_array(refl, exported)
    assert (folded == classes).mean() >= 0.9999


def test_one_channel_logit_model_takes_the_sigmoid_on_the_host(tmp_path):
    from cloudmask.engine import StreamConfig

    src = um.pixel_mlp(tmp_path / "l.onnx", outputs=1)  # no Sigmoid: the graph gives the logit
    um.recentre(src, _pixels(), "b3")
    card = load_model(um.card(src, kind="pixel", classes=("cloud",), output="logits"))
    refl = _scene(120, 90)
    classes, probs, _ = predict_array(refl, card, config=StreamConfig(probabilities=True))
    valid = ~np.isnan(refl).any(axis=0)
    logit = _session(src).run(None, {"x": refl[:, valid].T.copy()})[0][:, 0]
    assert np.array_equal(classes[valid], (logit > 0).astype(np.uint8))
    assert probs is not None and probs.shape == (2, 120, 90)
    p = 1 / (1 + np.exp(-logit.astype(np.float64)))
    assert np.abs(probs[1][valid] - np.rint(100 * p)).max() <= 1
    assert np.array_equal(probs[0][valid].astype(int) + probs[1][valid], np.full(valid.sum(), 100))


# ------------------------------------------------------------------------------ patch classifier


@pytest.mark.parametrize(("k", "variant"), [(4, {}), (2, {"maxpool": False, "head": "mean", "opset": 18}),
                                            (9, {"classes": 3})])
def test_stacked_classifier_scores_equal_per_patch_calls(tmp_path, k, variant):
    src = um.patch_classifier(tmp_path / "pc.onnx", **variant)
    classes = ("clear", "cloud", "shadow")[: variant.get("classes", 2)]
    res = export(load_model(um.card(src, kind="patch-classifier", classes=classes)), tmp_path / "out",
                 patches_per_call=k)
    _assert_compile_ready(res.onnx_path)
    assert res.input_shape == (1, 13 * k, 64, 64)
    ops = {n.op_type for n in onnx.load(str(res.onnx_path)).graph.node}
    assert "GlobalAveragePool" in ops and ops <= {"Conv", "Relu", "MaxPool", "GlobalAveragePool"}
    # 2k patches: each of them alone through the original, and k at a time through the export. The
    # patches differ in their borders: a conv that saw a neighbour's pixels would change the scores.
    rng = np.random.default_rng(k)
    x = rng.normal(0, 1, (2 * k, 13, 64, 64)).astype(np.float32)
    x[::2, :, :, :2] += 5.0
    x[1::2, :, -2:, :] -= 5.0
    orig, stacked = _session(src), _session(res.onnx_path)
    alone = np.concatenate([orig.run(None, {"x": x[i : i + 1]})[0] for i in range(2 * k)])
    together = np.concatenate([stacked.run(None, {"x": x[i : i + k].reshape(1, -1, 64, 64)})[0] for i in (0, k)])
    assert together.shape == (2, k * len(classes), 1, 1)
    got = together.reshape(2 * k, len(classes))
    assert np.abs(got - alone).max() <= 1e-5 * max(1.0, float(np.abs(alone).max()))


def test_stacked_classifier_through_the_engine_same_mask_in_fewer_calls(tmp_path):
    refl = _scene()
    src = um.patch_classifier(tmp_path / "pc.onnx")
    patches = np.nan_to_num(refl[:, :576, :640]).reshape(13, 9, 64, 10, 64).transpose(1, 3, 0, 2, 4)
    um.recentre(src, patches.reshape(-1, 13, 64, 64).copy(), "fb")
    original = load_model(um.card(src, kind="patch-classifier"))
    res = export(original, tmp_path / "out", patches_per_call=4)
    exported = load_model(res.card_path)
    assert exported.extra["patches_per_call"] == 4 and exported.patch_size == 64
    a, _, sa = predict_array(refl, original)
    b, _, sb = predict_array(refl, exported)
    assert a.shape == (10, 11) and set(np.unique(a)) == {0, 1, NODATA}
    assert np.array_equal(a, b)
    assert sa.calls == sa.patches and sb.patches == sa.patches
    assert sb.calls == math.ceil(sb.patches / 4) and sb.per_call == 4


class _DoubleBuffered:
    """A runner that answers two calls late, as a double-buffered Metis instance does (``lag = 2``)."""

    lag = 2

    def __init__(self, inner) -> None:  # noqa: ANN001 - any Runner
        self.inner, self.queue, self.calls = inner, [], 0

    @property
    def input_shape(self):  # noqa: ANN201
        return self.inner.input_shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.queue.append(self.inner.run(batch))
        return self.queue.pop(0) if len(self.queue) > self.lag else np.zeros_like(self.queue[0])

    def close(self) -> None:
        self.inner.close()


def test_stacked_classifier_on_four_double_buffered_instances(tmp_path):
    """Four instances, each two calls late: ceil(patches / 4) calls plus at most 2 drain calls each."""
    from cloudmask.runtime import OnnxRunner

    refl = _scene(400, 520)
    src = um.patch_classifier(tmp_path / "pc.onnx")
    patches = np.nan_to_num(refl[:, :384, :512]).reshape(13, 6, 64, 8, 64).transpose(1, 3, 0, 2, 4)
    um.recentre(src, patches.reshape(-1, 13, 64, 64).copy(), "fb")
    original = load_model(um.card(src, kind="patch-classifier"))
    exported = load_model(export(original, tmp_path / "out", patches_per_call=4).card_path)
    runners = [_DoubleBuffered(OnnxRunner(exported)) for _ in range(4)]
    a, _, sa = predict_array(refl, original)
    b, _, sb = predict_array(refl, exported, runners=runners)
    assert np.array_equal(a, b) and set(np.unique(a)) == {0, 1, NODATA}
    assert sb.calls == sum(r.calls for r in runners) <= math.ceil(sa.patches / 4) + 8


def _classifier_with(tmp_path: Path, edit: str) -> Path:
    src = um.patch_classifier(tmp_path / "pc.onnx", maxpool=False)
    m = onnx.load(str(src))
    g = m.graph
    if edit == "concat":  # a skip connection concatenated over channels mixes patches' channel blocks
        relu = next(n for n in g.node if n.output[0] == "r1")
        relu.output[0] = "r1a"
        g.node.insert(list(g.node).index(relu) + 1, helper.make_node("Concat", ["r1a", "r1a"], ["r1c"], axis=1))
        conv2 = next(n for n in g.node if n.name == "/c2/Conv")
        conv2.input[0] = "r1c"
        w = next(t for t in g.initializer if t.name == "c2w")
        arr = numpy_helper.to_array(w)
        w.CopyFrom(numpy_helper.from_array(np.concatenate([arr, arr], axis=1), "c2w"))
    elif edit == "flatten-map":  # the head sees every position of the map, not a pooled vector
        gap = next(n for n in g.node if n.op_type == "GlobalAveragePool")
        g.node.remove(gap)
        flat = next(n for n in g.node if n.op_type == "Flatten")
        flat.input[0] = "r3"
        fw = next(t for t in g.initializer if t.name == "fw")
        fw.CopyFrom(numpy_helper.from_array(np.ones((2, 12 * 32 * 32), np.float32), "fw"))
    elif edit == "wide-kernel":
        c1 = next(n for n in g.node if n.name == "/c1/Conv")
        for a in list(c1.attribute):
            if a.name in ("kernel_shape", "pads"):
                c1.attribute.remove(a)
        c1.attribute.extend([helper.make_attribute("kernel_shape", [1, 7]),
                             helper.make_attribute("pads", [0, 3, 0, 3])])
        w = next(t for t in g.initializer if t.name == "c1w")
        w.CopyFrom(numpy_helper.from_array(np.ones((8, 13, 1, 7), np.float32), "c1w"))
    onnx.checker.check_model(m)
    path = tmp_path / f"{edit}.onnx"
    onnx.save(m, str(path))
    return path


@pytest.mark.parametrize(("edit", "reason"), [
    ("concat", "cannot stack Concat"),
    ("flatten-map", "only dropping the 1x1 axes after global pooling"),
    ("wide-kernel", "a 1x7 kernel .* as a grouped Conv is not accelerated"),
])
def test_classifiers_that_cannot_be_stacked_exactly_are_refused_with_the_reason(tmp_path, edit, reason):
    card = load_model(um.card(_classifier_with(tmp_path, edit), kind="patch-classifier"))
    with pytest.raises(ModelError, match=reason):
        export(card, tmp_path / "out", patches_per_call=4)
    export(card, tmp_path / "one")  # one patch per call still exports


def test_classifier_with_normalisation_inside_and_padded_first_conv(tmp_path):
    """Sub/Div in front of a padded Conv: the scale goes into the weights, the offset stays as an Add (the
    zero padding of the normalised input must stay zero)."""
    src = um.patch_classifier(tmp_path / "pc.onnx", maxpool=False)
    m = onnx.load(str(src))
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(um.MEAN.reshape(1, 13, 1, 1), "mean"),
                          numpy_helper.from_array(um.STD.reshape(1, 13, 1, 1), "std")])
    g.node.insert(0, helper.make_node("Sub", ["x", "mean"], ["c"]))
    g.node.insert(1, helper.make_node("Div", ["c", "std"], ["n"]))
    next(n for n in g.node if n.name == "/c1/Conv").input[0] = "n"
    onnx.save(m, str(tmp_path / "norm.onnx"))
    card = load_model(um.card(tmp_path / "norm.onnx", kind="patch-classifier"))
    res = export(card, tmp_path / "out", patches_per_call=4)
    _assert_compile_ready(res.onnx_path)
    assert res.passes["preprocessing_folded"] == 2 and res.passes["preprocessing_kept_as_add"] == 1
    x = np.random.default_rng(5).uniform(0, 0.6, (4, 13, 64, 64)).astype(np.float32)
    alone = _session(tmp_path / "norm.onnx").run(None, {"x": x})[0]
    got = _session(res.onnx_path).run(None, {"x": x.reshape(1, -1, 64, 64)})[0].reshape(4, 2)
    assert np.abs(got - alone).max() <= 1e-5 * max(1.0, float(np.abs(alone).max()))


# ------------------------------------------------------------------------------ every supported model


SUPPORTED = [
    *(pytest.param(name, marks=pytest.mark.slow) for name in BUILTIN),
    "spectral-mlp", "spectral-mlp-matmul", "user-mlp-opset18", "user-sigmoid", "user-classifier-k4",
]


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_model_exports_compile_ready(tmp_path, name):
    """Every model the README lists as running on Metis after `cloudmask metis export`, plus the three kinds
    of user model: `metis check` on the exported graph finds no violation at all."""
    kwargs = {}
    if name == "spectral-mlp":
        model = str(MLP_DIR / "card.yaml")
    elif name == "spectral-mlp-matmul":
        model = str(MLP_DIR / "card-matmul.yaml")
    elif name == "user-mlp-opset18":
        model = str(um.card(um.pixel_mlp(tmp_path / "m.onnx", nc11=True, reshape="torch"), kind="pixel"))
    elif name == "user-sigmoid":
        model = str(um.card(um.pixel_mlp(tmp_path / "s.onnx", outputs=1, sigmoid=True), kind="pixel",
                            classes=("cloud",)))
    elif name == "user-classifier-k4":
        model = str(um.card(um.patch_classifier(tmp_path / "c.onnx", opset=18), kind="patch-classifier"))
        kwargs["patches_per_call"] = 4
    else:
        model = name
    res = export(model, tmp_path / "out", **kwargs)
    report = check(res.onnx_path)
    assert report.ok and report.compilable and not report.middle_violations, report.format()
    assert json.loads(res.config_path.read_text())["input_shape"] == list(res.input_shape)
    load_model(res.card_path)  # the card `run` needs loads


# ------------------------------------------------------------------------------ the CLI walk, real clip


def _cli(*args: str) -> str:
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def _run_clip(catalog: Path, model: Path, out: Path) -> tuple[np.ndarray, dict]:
    import rasterio

    _cli("run", "--stac", str(catalog), "--model", str(model), "--out", str(out), "--backend", "onnx",
         "--no-quicklook", "--no-progress", "--stats-json", str(out / "stats.json"))
    (tif,) = sorted(out.glob("*_cloudmask.tif"))
    with rasterio.open(tif) as ds:
        mask = ds.read(1)
    (scene,) = json.loads((out / "stats.json").read_text())["scenes"]
    return mask, scene


@pytest.mark.slow
@pytest.mark.shared
def test_cli_walk_user_models_on_the_real_l1c_clip(tmp_path):
    """`metis export` -> `metis check` -> `run --backend onnx` with the exported card, on the real 13-band L1C
    JP2 clip: the exported masks equal the originals; the classifier runs 4 patches per call."""
    from .test_pixel_models import _clip_catalog

    catalog = _clip_catalog(tmp_path)
    mlp = um.card(um.pixel_mlp(tmp_path / "mlp.onnx", nc11=True, reshape="torch"), kind="pixel")
    sig = um.card(um.pixel_mlp(tmp_path / "sig.onnx", outputs=1, sigmoid=True), kind="pixel", classes=("cloud",))
    pc = um.card(um.patch_classifier(tmp_path / "pc.onnx", opset=18), kind="patch-classifier")
    for name, card, extra in (("mlp", mlp, []), ("sig", sig, []), ("pc", pc, ["--patches-per-call", "4"])):
        out = _cli("metis", "export", "--model", str(card), "--out", str(tmp_path / f"exp-{name}"), *extra)
        assert "0 with violations" in out and ": OK" in out
        assert ": OK" in _cli("metis", "check", str(tmp_path / f"exp-{name}" / "model.onnx"))
        original, s0 = _run_clip(catalog, card, tmp_path / f"o-{name}")
        exported, s1 = _run_clip(catalog, tmp_path / f"exp-{name}" / "card.yaml", tmp_path / f"e-{name}")
        assert (original == exported).mean() >= 0.9999, name
        if name == "pc":
            assert original.shape == (5, 5) and s0["calls"] == s0["patches"] == 25
            assert s1["patches"] == 25 and s1["calls"] == math.ceil(25 / 4) <= math.ceil(25 / 4) + 8
