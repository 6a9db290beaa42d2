"""The metis backend's host logic against a fake ``axelera.runtime`` that follows METIS.md."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cloudmask.engine import ArraySink, ArraySource, StreamConfig, stream_scene
from cloudmask.errors import RuntimeBackendError
from cloudmask.models import load_model
from cloudmask.runtime import make_runners
from cloudmask.runtime.metis import dequantize_output, quantize_input

from .fakes import axelera_runtime


def _card(tmp_path, batch):
    compiled = tmp_path / f"model-b{batch}.json"
    compiled.write_text(json.dumps({"batch": batch, "channels": 4, "size": 256}))
    base = load_model("ukis-4b-l2a")
    from dataclasses import replace

    return replace(base, extra={"metis_model": str(compiled)})


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
    q = quantize_input(np.array([[[[5.0]]], [[[-5.0]]]], np.float32).reshape(2, 1, 1, 1)[:1], info)
    assert q.item() == 127


@pytest.mark.parametrize(("batch", "double_buffer"), [(1, True), (4, True), (1, False)])
def test_engine_with_metis_instances(fake_sdk, tmp_path, batch, double_buffer):
    from cloudmask.runtime.metis import make_metis_runners

    card = _card(tmp_path, batch)
    runners = make_metis_runners(card, double_buffer=double_buffer)
    assert len(runners) == 4 // batch  # 4 single-core instances, or one batch-4 instance
    assert all(r.input_shape == (batch, 4, 256, 256) for r in runners)
    rng = np.random.default_rng(1)
    h, w = 700, 650
    sign = np.where(rng.random((h // 50 + 1, w // 50 + 1)) > 0.5, 1.0, -1.0)
    field = np.kron(sign, np.ones((50, 50)))[:h, :w]
    refl = np.stack([card.mean[k] + field * card.std[k] for k in range(4)]).astype(np.float32)
    sink = ArraySink(h, w)
    stats = stream_scene(ArraySource(refl), card, runners, sink, StreamConfig(margin=32))
    assert np.array_equal(sink.classes, (field > 0).astype(np.uint8))
    extra = 2 * len([r for r in runners if r._inst is not None]) if double_buffer else 0
    device_calls = sum(i.calls for i in runners[0]._device.conn.instances)
    assert device_calls == stats.calls
    assert stats.calls >= -(-stats.patches // batch) and stats.calls <= -(-stats.patches // batch) + extra


def test_missing_sdk_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "axelera", None)
    with pytest.raises(RuntimeBackendError, match="Voyager SDK"):
        make_runners(load_model("ukis-4b-l2a"), "metis")


def test_card_without_compiled_model(fake_sdk):
    with pytest.raises(RuntimeBackendError, match="metis_model"):
        make_runners(load_model("ukis-4b-l2a"), "metis")


@pytest.mark.parametrize(("instances", "expected"), [(None, 4), (1, 1), (2, 2)])
def test_make_runners_metis_honours_instances(fake_sdk, tmp_path, instances, expected):
    from cloudmask.runtime import make_runners

    runners = make_runners(_card(tmp_path, 1), "metis", instances=instances)
    try:
        assert len(runners) == expected  # --instances 1 means one, not the default four
    finally:
        for r in runners:
            r.close()
