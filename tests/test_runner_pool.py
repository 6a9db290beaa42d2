"""One runner, one thread: the runner pool's leases, in a job with concurrency 2 and in `run`."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cloudmask.models import load_model
from cloudmask.runtime import EmulatedRunner
from cloudmask.runtime.pool import RunnerPool, process_pool

from .test_jobs import write_spec


class _Overlaps:
    """Patches EmulatedRunner.run to record any call that starts while the same runner is still running."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active: dict[int, int] = {}
        self.overlaps = 0
        self.calls = 0
        self._lock = threading.Lock()
        original = EmulatedRunner.run

        def run(runner: EmulatedRunner, batch: Any) -> Any:
            with self._lock:
                self.active[id(runner)] = self.active.get(id(runner), 0) + 1
                self.overlaps += self.active[id(runner)] > 1
                self.calls += 1
            try:
                time.sleep(0.003)  # a device call takes time: two threads would meet here
                return original(runner, batch)
            finally:
                with self._lock:
                    self.active[id(runner)] -= 1

        monkeypatch.setattr(EmulatedRunner, "run", run)


def test_job_with_concurrency_2_never_calls_one_runner_from_two_threads(tmp_path, sample_catalog, monkeypatch):
    from cloudmask.jobs import load_spec, run_job

    seen = _Overlaps(monkeypatch)
    spec = load_spec(write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated", concurrency=2,
                                emulated_latency=0.001, resolution=10))
    report = run_job(spec)
    assert len(report.processed) == 3 and seen.calls > 10
    assert seen.overlaps == 0


def test_run_never_calls_one_runner_from_two_threads(tmp_path, sample_catalog, monkeypatch):
    from click.testing import CliRunner

    from cloudmask.cli import main

    seen = _Overlaps(monkeypatch)
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "o"),
                                    "--backend", "emulated", "--no-quicklook", "--resolution", "10"])
    assert res.exit_code == 0, res.output
    assert seen.calls > 10 and seen.overlaps == 0


def test_lease_is_exclusive_and_loads_once(monkeypatch):
    card = load_model("ukis-6b-l2a")
    closed: list[int] = []
    monkeypatch.setattr(EmulatedRunner, "close", lambda self: closed.append(id(self)))
    with RunnerPool() as pool:
        a = pool.lease(card, "emulated")
        b = pool.lease(card, "emulated")
        assert pool.loads == {}  # loaded on first use, not by the lease
        assert a.runners is b.runners and pool.loads == {"ukis-6b-l2a@emulated": 1}
        other = pool.lease(card, "emulated", latency_s=0.01)  # another build option: other runners
        assert other.runners is not a.runners and pool.loads["ukis-6b-l2a@emulated"] == 2
        order: list[str] = []
        with a:
            t = threading.Thread(target=lambda: (b.__enter__(), order.append("b"), b.__exit__()))
            t.start()
            time.sleep(0.05)
            order.append("a done")
        t.join(2)
        assert order == ["a done", "b"] and b.waited >= 0.04
    assert len(closed) == 2  # each runner closed once, when the pool closes
    with pytest.raises(RuntimeError, match="closed"):
        pool.lease(card, "emulated")


def test_process_pool_is_one_per_process():
    assert process_pool() is process_pool()


def test_run_closes_its_runners_when_the_batch_ends(tmp_path, sample_catalog, monkeypatch):
    from click.testing import CliRunner

    from cloudmask.cli import main

    made: list[int] = []
    closed: list[int] = []
    real_init = EmulatedRunner.__init__

    def init(self: EmulatedRunner, *a: Any, **k: Any) -> None:
        real_init(self, *a, **k)
        made.append(id(self))

    monkeypatch.setattr(EmulatedRunner, "__init__", init)
    monkeypatch.setattr(EmulatedRunner, "close", lambda self: closed.append(id(self)))
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "o"),
                                    "--backend", "emulated", "--no-quicklook", "--instances", "2"])
    assert res.exit_code == 0, res.output
    assert len(made) == 2 and sorted(closed) == sorted(made)  # loaded once for three scenes, each closed once


def test_a_scene_reads_its_first_rows_while_its_model_loads(tmp_path, sample_catalog, monkeypatch):
    """``run`` starts the first scene's first strip (its prefetch) before the model loads, so a slow load
    (a compiled device model) overlaps the decode instead of coming before it."""
    from click.testing import CliRunner

    import cloudmask.runtime as runtime
    from cloudmask.cli import main
    from cloudmask.reader import RasterSource

    events: list[str] = []
    real_make, real_prefetch = runtime.make_runners, RasterSource.prefetch

    def slow_make(*a: Any, **k: Any) -> Any:
        events.append("load")
        time.sleep(0.2)
        return real_make(*a, **k)

    def prefetch(self: RasterSource, *a: Any, **k: Any) -> None:
        events.append("prefetch")
        real_prefetch(self, *a, **k)

    monkeypatch.setattr(runtime, "make_runners", slow_make)
    monkeypatch.setattr(RasterSource, "prefetch", prefetch)
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "o"),
                                    "--backend", "emulated", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    assert events[0] == "prefetch" and events.count("load") == 1  # (the next scene may prefetch meanwhile too)
