"""The streaming engine: layout, batching, instances, skipping, errors — against real and emulated runners."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from cloudmask.models import NODATA, load_model
from cloudmask.runtime import EmulatedRunner, make_runners
from cloudmask.stream import ArraySink, ArraySource, StreamConfig, stream_scene


class RecordingRunner:
    """Returns scores that encode where each patch came from, and records calls."""

    def __init__(self, shape):
        self._shape = shape
        self.calls = 0
        self.threads: set[str] = set()

    @property
    def input_shape(self):
        return self._shape

    def run(self, batch):
        assert batch.shape == self._shape and batch.dtype == np.float32
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        b, _, h, w = batch.shape
        out = np.zeros((b, 3, h, w), np.float32)
        # class = 1 (cloud) where band 0 is positive, else 0 (clear)
        out[:, 1] = np.where(batch[:, 0] > 0, 10.0, -10.0)
        return out

    def close(self):
        pass


def _scene(h=300, w=250, seed=0):
    card = load_model("ukis-4b-l2a")
    rng = np.random.default_rng(seed)
    refl = rng.uniform(0.0, 0.6, (4, h, w)).astype(np.float32)
    # cloud truth: band 0 above its mean -> normalised positive
    return card, refl


@pytest.mark.parametrize(("batch", "instances"), [(1, 1), (4, 1), (1, 3), (4, 2)])
def test_engine_is_exact_for_a_pixelwise_model(batch, instances):
    card, refl = _scene()
    shape = (batch, 4, 256, 256)
    runners = [RecordingRunner(shape) for _ in range(instances)]
    sink = ArraySink(300, 250)
    stats = stream_scene(ArraySource(refl), card, runners, sink, StreamConfig(margin=40))
    expected = (refl[0] > card.mean[0]).astype(np.uint8)
    assert np.array_equal(sink.classes, expected)
    n = stats.patches
    assert n == 2 * 2  # ceil(300/176) x ceil(250/176)
    assert sum(r.calls for r in runners) == stats.calls == -(-n // batch)
    if instances > 1 and stats.calls >= instances:
        assert sum(1 for r in runners if r.calls) >= 2  # work spread over instances


def test_nodata_is_255_and_empty_patches_are_skipped():
    card, refl = _scene(600, 600)
    refl[:, :, :300] = np.nan  # left half nodata: the first column of patches sees none
    runner = RecordingRunner((1, 4, 256, 256))
    sink = ArraySink(600, 600)
    stats = stream_scene(ArraySource(refl), card, [runner], sink, StreamConfig(margin=32))
    assert (sink.classes[:, :300] == NODATA).all()
    assert (sink.classes[:, 300:] != NODATA).all()
    assert stats.skipped > 0 and stats.patches + stats.skipped == 4 * 4
    assert runner.calls == stats.patches


def test_probabilities_in_percent():
    card, refl = _scene()
    sink = ArraySink(300, 250, probabilities=True)
    stream_scene(ArraySource(refl), card, [RecordingRunner((1, 4, 256, 256))], sink,
                 StreamConfig(probabilities=True))
    assert sink.probabilities is not None
    total = sink.probabilities.astype(int).sum(axis=0)
    assert np.all(np.abs(total - 100) <= 2)
    assert np.array_equal(np.argmax(sink.probabilities, axis=0) == 1, sink.classes == 1)


def test_runner_error_is_raised_not_hung():
    card, refl = _scene()

    class Boom(RecordingRunner):
        def run(self, batch):
            raise RuntimeError("device fell over")

    with pytest.raises(RuntimeError, match="device fell over"):
        stream_scene(ArraySource(refl), card, [Boom((1, 4, 256, 256))], ArraySink(300, 250))


def test_source_error_is_raised():
    card, refl = _scene()

    class BadSource(ArraySource):
        def read_rows(self, start, stop):
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        stream_scene(BadSource(refl), card, [RecordingRunner((1, 4, 256, 256))], ArraySink(300, 250))


def test_mismatched_runner_shape_rejected():
    card, refl = _scene()
    with pytest.raises(Exception, match="does not match"):
        stream_scene(ArraySource(refl), card, [EmulatedRunner(6, 256)], ArraySink(300, 250))


def test_emulated_backend_counts_calls():
    card, refl = _scene(500, 500)
    runners = make_runners(card, "emulated", instances=2, batch=4, latency_s=0.001)
    stats = stream_scene(ArraySource(refl), card, runners, ArraySink(500, 500))
    assert sum(r.calls for r in runners) == stats.calls == -(-stats.patches // 4)
