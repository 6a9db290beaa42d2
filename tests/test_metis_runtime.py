"""The metis backend against the emulated Voyager SDK (cloudmask.metis.fake_sdk), both API generations.

The emulation follows voyager-sdk docs/reference/apis/axruntime-py.md (low level) and
docs/reference/pipeline-builder/api/axelera.runtime.op.inference.md + ultralytics nn/backends/axelera.py (1.8).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloudmask.card import ModelCard
from cloudmask.engine import ArraySink, ArraySource, StreamConfig, stream_scene
from cloudmask.errors import ModelCardError, RuntimeBackendError
from cloudmask.metis.fake_sdk import runtime as fake_runtime
from cloudmask.metis.fake_sdk import write_compiled
from cloudmask.models import load_model
from cloudmask.runtime import make_runners
from cloudmask.runtime.metis import dequantize_output, make_metis_runners, quantize_input

from .fakes import axelera_runtime

BANDS4 = ("blue", "green", "red", "nir")


def _card(tmp_path, batch, **meta):
    compiled = tmp_path / f"model-b{batch}.json"
    compiled.write_text(json.dumps({"batch": batch, "channels": 4, "size": 256}))
    base = load_model("ukis-4b-l2a")
    extra = {"metis_model": str(compiled)}
    if meta:
        extra["metis"] = meta
    return replace(base, extra=extra)


def _conv_onnx(path: Path, weight: np.ndarray, op: str | None = None, hw: tuple[int, int] | None = None) -> Path:
    """A 1x1 Conv [N, C, H, W] -> [N, K, H, W], optionally followed by ``op`` (e.g. Neg); static [1, C, *hw]
    when ``hw`` is given, else dynamic."""
    k, c = weight.shape
    ins = [1, c, *hw] if hw else ["n", c, "h", "w"]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ins)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, k, *hw] if hw else ["n", k, "h", "w"])
    w = numpy_helper.from_array(weight.reshape(k, c, 1, 1).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if op else "y"])]
    if op:
        nodes.append(helper.make_node(op, ["c"], ["y"]))
    g = helper.make_graph(nodes, "conv", [x], [y], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _graph(path: Path, op: str, channels: int, nhwc: tuple[int, int, int] | None = None) -> Path:
    """A one-node host graph ``op`` over [N, channels, H, W] (a preamble or postamble), or over a static
    NHWC ``[1, *nhwc]``."""
    shape = [1, *nhwc] if nhwc else ["n", channels, "h", "w"]
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("b", TensorProto.FLOAT, shape)
    g = helper.make_graph([helper.make_node(op, ["a"], ["b"])], op, [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _field(h: int, w: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random((h // 50 + 1, w // 50 + 1)) > 0.5, 1.0, -1.0)
    return np.kron(sign, np.ones((50, 50)))[:h, :w]


def _pixel_card(tmp_path: Path, fold: tuple[int, int], compiled: Path | None = None, **meta) -> ModelCard:
    """A folded 4-band pixel model: cloud logit = 4 x band 0, clear logit = 0."""
    wt = np.zeros((2, 4), np.float32)
    wt[1, 0] = 4.0
    onnx_path = _conv_onnx(tmp_path / "folded.onnx", wt, hw=fold)
    _conv_onnx(tmp_path / "device.onnx", wt)  # what the emulated device runs, at any batch
    extra: dict = {"fold": list(fold)}
    if compiled is not None:
        extra["metis_model"] = str(compiled)
    if meta:
        extra["metis"] = meta
    return ModelCard(name="mlp", onnx_path=onnx_path, bands=BANDS4, product_level="l2a", resolution=10,
                     mean=(0.0,) * 4, std=(1.0,) * 4, classes=("clear", "cloud"), kind="pixel", extra=extra)


def _stream(card, runners, h=300, w=260):
    field = _field(h, w)
    refl = np.stack([card.mean[k] + field * card.std[k] for k in range(card.n_bands)]).astype(np.float32)
    sink = ArraySink(h, w)
    stats = stream_scene(ArraySource(refl), card, runners, sink, StreamConfig(margin=32))
    return sink.classes, (field > 0).astype(np.uint8), stats


def test_quantize_roundtrip_with_padding():
    info = axelera_runtime.TensorInfo((1, 4, 4, 8), (1, 4, 4, 6), [(0, 0), (0, 0), (0, 0), (0, 2)], 0.05, -3)
    x = np.random.default_rng(0).uniform(-2, 2, (1, 6, 4, 4)).astype(np.float32)
    q = quantize_input(x, info)
    assert q.dtype == np.int8 and q.shape == (1, 4, 4, 8)
    assert (q[..., 6:] == -3).all()  # channel padding holds the zero point
    back = dequantize_output(q, info)
    assert back.shape == x.shape and np.abs(back - x).max() <= 0.025 + 1e-6


def test_quantize_saturates():
    info = axelera_runtime.TensorInfo((1, 1, 1, 1), (1, 1, 1, 1), [(0, 0)] * 4, 0.01, 0)
    q = quantize_input(np.array([[[[5.0]]]], np.float32), info)
    assert q.item() == 127


@pytest.mark.parametrize(("batch", "double_buffer"), [(1, True), (4, True), (1, False)])
def test_engine_with_metis_instances(fake_sdk, tmp_path, batch, double_buffer):
    card = _card(tmp_path, batch)
    runners = make_metis_runners(card, double_buffer=double_buffer)
    assert len(runners) == 4 // batch  # 4 one-core instances, or one batch-4 instance
    assert all(r.input_shape == (batch, 4, 256, 256) for r in runners)
    ctx = runners[0]._session.ctx
    # axruntime-py.md: one Connection per instance, num_sub_devices matching the model's batch
    assert [c.num_sub_devices for c in ctx.connections] == [batch] * len(runners)
    assert all(len(c.instances) == 1 for c in ctx.connections)
    h, w = 700, 650
    field = _field(h, w)
    refl = np.stack([card.mean[k] + field * card.std[k] for k in range(4)]).astype(np.float32)
    sink = ArraySink(h, w)
    stats = stream_scene(ArraySource(refl), card, runners, sink, StreamConfig(margin=32))
    assert np.array_equal(sink.classes, (field > 0).astype(np.uint8))
    device_calls = sum(i.calls for c in ctx.connections for i in c.instances)
    assert device_calls == stats.calls
    extra = 2 * len(runners) if double_buffer else 0
    assert -(-stats.patches // batch) <= stats.calls <= -(-stats.patches // batch) + extra
    for r in runners:
        r.close()
    assert ctx.released and all(c.released for c in ctx.connections)  # every resource released on close
    assert fake_runtime.DEVICES[0].reserved == 0


def test_one_instance_over_all_cores(fake_sdk, tmp_path):
    """--cores 4: the user's case, one batch-1 instance on all four cores (aipu_cores as compiled)."""
    compiled = write_compiled(tmp_path / "c" / "model.json", onnx=None, input_shape=(1, 4, 256, 256), classes=3,
                              batch=1, cores=4, in_zero_point=-3)
    card = replace(load_model("ukis-4b-l2a"), extra={"metis_model": str(compiled), "metis": {"aipu_cores": 4}})
    (runner,) = make_metis_runners(card)
    conn = runner._session.ctx.connections[0]
    assert runner.input_shape == (1, 4, 256, 256) and conn.num_sub_devices == 4
    classes, expected, _ = _stream(card, [runner])
    assert np.array_equal(classes, expected)
    runner.close()


def test_more_instances_than_cores_is_refused_and_released(fake_sdk, tmp_path):
    card = _card(tmp_path, 1, aipu_cores=4)
    compiled = write_compiled(tmp_path / "m.json", onnx=None, input_shape=(1, 4, 256, 256), classes=3, cores=4)
    card = replace(card, extra={**card.extra, "metis_model": str(compiled)})
    with pytest.raises(RuntimeBackendError, match="DeviceInUse"):
        make_metis_runners(card, instances=2)  # two 4-core instances do not fit one Metis
    assert fake_runtime.DEVICES[0].reserved == 0  # the first connection was released


def test_batch4_folded_pixel_model_runs(fake_sdk, tmp_path):
    """A folded pixel model compiled with runtime batch 4 takes four folds per call (no longer rejected)."""
    card = _pixel_card(tmp_path, (16, 16))
    compiled = write_compiled(tmp_path / "b4" / "model.json", onnx=tmp_path / "device.onnx", input_shape=(1, 4, 16, 16),
                              classes=2, batch=4, in_scale=0.02)
    card = replace(card, extra={**card.extra, "metis_model": str(compiled)})
    (runner,) = make_metis_runners(card)
    assert runner.compiled_batch == 4 and runner.input_shape == (1, 4, 64, 16)
    classes, expected, stats = _stream(card, [runner])
    assert np.array_equal(classes, expected)
    assert stats.calls <= -(-300 * 260 // (4 * 256)) + 2
    (cpu,) = make_runners(card, "onnxruntime", instances=1)
    cpu_classes, _, _ = _stream(card, [cpu])
    assert np.array_equal(classes, cpu_classes)  # the same mask as the float model on the CPU


def _host_graph_setup(tmp_path):
    """A one-Conv 4-band pixel model (cloud where band 0 is high), its card, and a folder for compiled models."""
    wt = np.zeros((2, 4), np.float32)
    wt[1, 0] = 4.0
    core = _conv_onnx(tmp_path / "core.onnx", wt)
    d = tmp_path / "compiled"
    d.mkdir()
    return core, _pixel_card(tmp_path, (16, 16)), d


def test_preamble_and_postamble_run_on_the_host(fake_sdk, tmp_path):
    """axruntime-py.md: preamble_graph before the AIPU, postamble_graph after depad + dequantize."""
    core, base, d = _host_graph_setup(tmp_path)
    _graph(d / "pre.onnx", "Neg", 4)   # flips the input's sign: the device sees -x
    plain = write_compiled(d / "plain.json", onnx=core, input_shape=(1, 4, 16, 16), classes=2)
    pre = write_compiled(d / "pre.json", onnx=core, input_shape=(1, 4, 16, 16), classes=2, preamble_graph="pre.onnx")
    _graph(d / "post.onnx", "Neg", 2)  # flips the logits back: cloud wins where the clear logit lost
    both = write_compiled(d / "both.json", onnx=core, input_shape=(1, 4, 16, 16), classes=2,
                          preamble_graph="pre.onnx", postamble_graph="post.onnx")
    masks = {}
    for name, path in (("plain", plain), ("pre", pre), ("both", both)):
        card = replace(base, extra={**base.extra, "metis_model": str(path)})
        runners = make_metis_runners(card, instances=1, double_buffer=False)
        masks[name], expected, _ = _stream(card, runners)
        runners[0].close()
    assert np.array_equal(masks["plain"], expected)
    assert np.array_equal(masks["pre"], 1 - expected)  # the preamble ran: its sign flip reached the device
    # Neg(Conv(-x)) = Conv(x) for a bias-free conv: both graphs ran, in order
    assert np.array_equal(masks["both"], expected)


def test_host_graphs_declared_nhwc_get_nhwc(fake_sdk, tmp_path):
    """A preamble/postamble whose declared input is NHWC (the AIPU's layout) is fed NHWC, its output read back."""
    core, base, d = _host_graph_setup(tmp_path)
    _graph(d / "pre.onnx", "Neg", 4, nhwc=(16, 16, 4))
    _graph(d / "post.onnx", "Neg", 2, nhwc=(16, 16, 2))
    masks = []
    for name, post in (("pre", ""), ("both", "post.onnx")):
        path = write_compiled(d / f"{name}.json", onnx=core, input_shape=(1, 4, 16, 16), classes=2,
                              preamble_graph="pre.onnx", postamble_graph=post)
        card = replace(base, extra={**base.extra, "metis_model": str(path)})
        (runner,) = make_metis_runners(card, instances=1, double_buffer=False)
        mask, expected, _ = _stream(card, [runner])
        masks.append(mask)
        runner.close()
    assert np.array_equal(masks[0], 1 - expected) and np.array_equal(masks[1], expected)


def test_missing_preamble_file_names_it(fake_sdk, tmp_path):
    compiled = write_compiled(tmp_path / "m.json", onnx=None, input_shape=(1, 4, 256, 256), classes=3,
                              preamble_graph="gone.onnx")
    card = replace(load_model("ukis-4b-l2a"), extra={"metis_model": str(compiled)})
    with pytest.raises(RuntimeBackendError, match="preamble graph .*gone.onnx"):
        make_metis_runners(card)
    assert fake_runtime.DEVICES[0].reserved == 0


def test_op_api_of_sdk_18_finds_axm_and_batches(fake_sdk_18, tmp_path):
    """SDK 1.8: op.load(<model>.axm).optimized(), found in a directory; several samples via .batch()."""
    card = _pixel_card(tmp_path, (16, 16))
    d = tmp_path / "compiled"
    write_compiled(d / "sub" / "mlp.axm", onnx=card.onnx_path, input_shape=(1, 4, 16, 16), classes=2, in_scale=0.02)
    card = replace(card, extra={**card.extra, "metis_model": str(d)})
    (runner,) = make_metis_runners(card, samples_per_call=4)
    assert type(runner).__name__ == "MetisOpRunner" and runner.input_shape == (1, 4, 64, 16)
    classes, expected, stats = _stream(card, [runner])
    assert np.array_equal(classes, expected)
    model = runner._model
    assert model.calls == stats.calls and model.samples == 4 * stats.calls  # each call one batch() of 4 samples
    # a patch model: one sample per call through __call__
    seg = replace(load_model("ukis-4b-l2a"), extra={"metis_model": str(
        write_compiled(tmp_path / "seg.axm", onnx=None, input_shape=(1, 4, 256, 256), classes=3, in_zero_point=-3))})
    (one,) = make_metis_runners(seg, samples_per_call=1)
    classes, expected, stats = _stream(seg, [one])
    assert np.array_equal(classes, expected) and one._model.samples == stats.calls


def test_axm_without_sdk_18_says_what_to_install(fake_sdk, tmp_path):
    axm = write_compiled(tmp_path / "m.axm", onnx=None, input_shape=(1, 4, 256, 256), classes=3)
    card = replace(load_model("ukis-4b-l2a"), extra={"metis_model": str(axm)})
    with pytest.raises(RuntimeBackendError, match=r"axelera.runtime.op.*SDK 1.8"):
        make_metis_runners(card)


def test_model_json_runs_low_level_under_sdk_18(fake_sdk_18, tmp_path):
    runners = make_metis_runners(_card(tmp_path, 1))
    assert len(runners) == 4 and type(runners[0]).__name__ == "MetisRunner"


def test_missing_sdk_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "axelera", None)
    with pytest.raises(RuntimeBackendError, match="Voyager SDK"):
        make_runners(load_model("ukis-4b-l2a"), "metis")


def test_card_without_compiled_model(fake_sdk):
    with pytest.raises(ModelCardError, match="metis_model"):
        make_runners(load_model("ukis-4b-l2a"), "metis")


def test_no_device_says_so(fake_sdk, tmp_path):
    fake_runtime.reset(boards=0)
    with pytest.raises(RuntimeBackendError, match="no Metis device"):
        make_metis_runners(_card(tmp_path, 1))


@pytest.mark.parametrize(("instances", "expected"), [(None, 4), (1, 1), (2, 2)])
def test_make_runners_metis_honours_instances(fake_sdk, tmp_path, instances, expected):
    runners = make_runners(_card(tmp_path, 1), "metis", instances=instances)
    try:
        assert len(runners) == expected  # --instances 1 means one, not the default four
    finally:
        for r in runners:
            r.close()


def test_metis_model_is_relative_to_the_card(fake_sdk, tmp_path, monkeypatch):
    """metis_model in a card file resolves against the card's directory, not the working directory."""
    card = load_model("ukis-4b-l2a")
    d = tmp_path / "export"
    write_compiled(d / "compiled" / "model.json", onnx=None, input_shape=(1, 4, 256, 256), classes=3, in_zero_point=-3)
    path = replace(card, extra={"metis_model": str(d / "compiled" / "model.json")}).save(d / "card.yaml")
    assert "metis_model: compiled/model.json" in path.read_text()  # written relative, like onnx
    monkeypatch.chdir(tmp_path)
    loaded = load_model(str(path.relative_to(tmp_path)))
    assert loaded.extra["metis_model"] == str((d / "compiled" / "model.json").resolve())
    runners = make_runners(loaded, "metis", instances=1)
    assert runners[0].input_shape == (1, 4, 256, 256)
    (d / "compiled" / "model.json").unlink()
    with pytest.raises(ModelCardError, match=r"metis_model .*does not exist"):
        make_runners(load_model(str(path)), "metis")


def test_missing_compiled_model_is_not_reported_as_unwritable_output(fake_sdk, tmp_path, sample_catalog):
    from click.testing import CliRunner

    from cloudmask.cli import main

    card = replace(load_model("ukis-4b-l2a"), extra={"metis_model": str(tmp_path / "nowhere" / "model.json")})
    path = card.save(tmp_path / "card.yaml")
    r = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--model", str(path), "--out",
                                  str(tmp_path / "out"), "--backend", "metis", "--no-quicklook", "--no-progress",
                                  "--limit", "1"])
    assert r.exit_code != 0
    assert "metis_model" in r.output and "does not exist" in r.output and "writable" not in r.output


def test_metis_info_prints_version_api_and_devices(fake_sdk, monkeypatch):
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["metis", "info"])
    assert r.exit_code == 0, r.output
    assert "1.6.0" in r.output and "low-level axelera.runtime" in r.output and "metis-0:1:0" in r.output
    fake_runtime.reset(boards=0)
    r = CliRunner().invoke(main, ["metis", "info"])
    assert "devices: none" in r.output and "axdevice" in r.output


def test_metis_info_sdk_18_and_none(fake_sdk_18, monkeypatch):
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["metis", "info"])
    assert "1.8.0" in r.output and "axelera.runtime.op" in r.output
    monkeypatch.setitem(sys.modules, "axelera", None)
    r = CliRunner().invoke(main, ["metis", "info"])
    assert r.exit_code == 0 and "not installed" in r.output and "axelera-rt" in r.output
