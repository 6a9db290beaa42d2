"""The streaming engine: layout, batching, instances, skipping, errors — against real and emulated runners."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cloudmask.engine import ArraySink, ArraySource, StreamConfig, stream_scene
from cloudmask.errors import CloudmaskError
from cloudmask.models import NODATA, load_model
from cloudmask.runtime import EmulatedRunner, make_runners


class RecordingRunner:
    """Returns scores that encode where each patch came from, and records calls."""

    def __init__(self, shape, delay=0.0):
        self._shape = shape
        self.calls = 0
        self.threads: set[str] = set()
        self.delay = delay  # seconds per call, like a device (other instances take batches meanwhile)

    @property
    def input_shape(self):
        return self._shape

    def run(self, batch):
        assert batch.shape == self._shape and batch.dtype == np.float32
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
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
    runners = [RecordingRunner(shape, delay=0.05 if instances > 1 else 0.0) for _ in range(instances)]
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
    with pytest.raises(CloudmaskError, match="does not match"):
        stream_scene(ArraySource(refl), card, [EmulatedRunner(6, 256)], ArraySink(300, 250))


def test_emulated_backend_counts_calls():
    card, refl = _scene(500, 500)
    runners = make_runners(card, "emulated", instances=2, batch=4, latency_s=0.001)
    stats = stream_scene(ArraySource(refl), card, runners, ArraySink(500, 500))
    assert sum(r.calls for r in runners) == stats.calls == -(-stats.patches // 4)


def test_stats_merge_every_thread_and_show_the_call_budget():
    card, refl = _scene(500, 500)
    runners = [RecordingRunner((2, 4, 256, 256)) for _ in range(3)]
    stats = stream_scene(ArraySource(refl), card, runners, ArraySink(500, 500))
    assert stats.unit == "patches" and stats.per_call == 2
    assert stats.calls == sum(r.calls for r in runners) and stats.samples_per_call == stats.patches / stats.calls
    assert stats.seconds["read"] > 0 and stats.seconds["device"] > 0 and stats.seconds["blend"] > 0
    d = stats.as_dict()
    assert d["per_call"] == 2 and d["calls"] == stats.calls
    assert f"device calls {stats.calls} of up to 2 patches per call" in stats.table()


def test_classes_beyond_three_come_from_the_card():
    """A 4-channel model (clear, cloud, shadow, thin cloud) writes class 3 where channel 3 wins."""
    base, refl = _scene()
    card = base.with_onnx(base.onnx_path, classes=("clear", "cloud", "shadow", "thin_cloud"))

    class FourClass(RecordingRunner):
        def run(self, batch):
            self.calls += 1
            out = np.zeros((batch.shape[0], 4, *batch.shape[2:]), np.float32)
            out[:, 3] = np.where(batch[:, 0] > 0, 10.0, -10.0)
            return out

    sink = ArraySink(300, 250, probabilities=True, classes=4)
    stream_scene(ArraySource(refl), card, [FourClass((1, 4, 256, 256))], sink, StreamConfig(probabilities=True))
    expected = np.where(refl[0] > card.mean[0], 3, 0)
    assert np.array_equal(sink.classes, expected)
    assert sink.probabilities is not None and sink.probabilities.shape == (4, 300, 250)


def test_batch_arrays_are_recycled_not_reallocated():
    card, refl = _scene(1000, 1000)
    seen: set[int] = set()

    class Ids(RecordingRunner):
        def run(self, batch):
            seen.add(id(batch))
            return super().run(batch)

    cfg = StreamConfig(queue_batches=2)
    stats = stream_scene(ArraySource(refl), card, [Ids((1, 4, 256, 256))], ArraySink(1000, 1000), cfg)
    assert stats.calls == 25 and len(seen) <= cfg.queue_batches + 1 + 1  # the pool: queue + device + producer


def test_small_patches_get_a_halo_they_can_hold():
    """A 64-px model: the default 26-px halo would leave a 12-px core (patches reaching past their
    neighbours) and used to crash the blender; the default is clamped, a too-wide explicit one refused."""
    from dataclasses import replace

    card, refl = _scene(200, 170)
    small = replace(card, patch_size=64)
    sink = ArraySink(200, 170)
    stream_scene(ArraySource(refl), small, [RecordingRunner((1, 4, 64, 64))], sink, StreamConfig())
    assert np.array_equal(sink.classes, (refl[0] > card.mean[0]).astype(np.uint8))
    with pytest.raises(CloudmaskError, match="at most 21"):
        stream_scene(ArraySource(refl), small, [RecordingRunner((1, 4, 64, 64))], ArraySink(200, 170),
                     StreamConfig(margin=22))


def test_patches_carried_to_the_next_batch_survive_the_read_ahead():
    """Batch 3 with 4 patches per strip: part of a batch waits for the next strip while the reader refills
    that strip's buffer with the strip after (a slow device and a short queue make the producer wait).
    The carried patches must be the ones cut, not the rows read later."""
    card, refl = _scene(900, 600, seed=3)
    expected = (refl[0] > card.mean[0]).astype(np.uint8)
    for _ in range(3):
        sink = ArraySink(900, 600)
        runner = RecordingRunner((3, 4, 256, 256), delay=0.05)
        stream_scene(ArraySource(refl), card, [runner], sink, StreamConfig(margin=40, queue_batches=1))
        assert np.array_equal(sink.classes, expected)


class ColumnSource(ArraySource):
    """An in-memory source that reads column ranges into caller buffers, as RasterSource does: the
    engine then reads a scene's first strip in column parts."""

    def __init__(self, reflectance, delay=0.0):
        super().__init__(reflectance)
        self.bands = tuple(range(reflectance.shape[0]))
        self.delay = delay
        self.reads: list[tuple[int, int, tuple[int, int] | None]] = []

    def read_rows(self, start, stop, out=None, cols=None):
        self.reads.append((start, stop, cols))
        if self.delay:
            time.sleep(self.delay)
        c0, c1 = cols if cols is not None else (0, self.shape[1])
        got = self.data[:, start:stop, c0:c1]
        if out is None:
            return np.array(got, dtype=np.float32, copy=True)
        out[...] = got
        return out


@pytest.mark.parametrize("batch", [1, 3])
def test_first_strip_read_in_column_parts_is_exact(batch):
    """The first strip arrives in column parts (slowly) while patches of its left part already run;
    mirrored edges, skipped empty patches and carried batches must all come out exact."""
    card, refl = _scene(700, 900, seed=5)
    refl[:, :, 700:] = np.nan  # the right columns are nodata: those patches are skipped
    expected = np.where(np.isnan(refl[0]), NODATA, (refl[0] > card.mean[0]).astype(np.uint8))
    src = ColumnSource(refl, delay=0.02)
    sink = ArraySink(700, 900)
    runner = RecordingRunner((batch, 4, 256, 256))
    stats = stream_scene(src, card, [runner], sink, StreamConfig(margin=40))
    assert np.array_equal(sink.classes, expected)
    first = [r for r in src.reads if r[2] is not None]
    assert len(first) >= 2 and first[0][2][0] == 0 and first[-1][2][1] == 900  # column parts, left to right
    assert stats.skipped > 0
