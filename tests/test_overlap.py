"""Scenes back to back on one device: turns in order, the next scene prepared while one streams."""

from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner

from cloudmask.overlap import DeviceClock, DeviceTurns, ScenePipeline


def test_turns_go_in_ticket_order_and_an_unused_ticket_passes_on():
    turns = DeviceTurns()
    tickets = [turns.ticket() for _ in range(4)]
    order: list[int] = []
    lock = threading.Lock()

    def stream(k: int) -> None:
        with tickets[k], lock:
            order.append(k)

    tickets[1].close()  # scene 1 failed before streaming
    threads = [threading.Thread(target=stream, args=(k,)) for k in (3, 2, 0)]  # started out of order
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert order == [0, 2, 3]


def test_pipeline_prepares_the_next_scene_while_one_finishes_and_keeps_errors_apart():
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    next_prepared = threading.Event()

    def log(what: str, spec: str) -> None:
        with lock:
            events.append((what, spec))

    def run(spec: str, turn) -> str:
        log("prepare", spec)
        if spec == "b":
            next_prepared.set()
        if spec == "c":
            raise ValueError("scene c is broken")
        with turn:
            log("stream", spec)
        if spec == "a":  # a finishes only once b is being prepared: they overlap
            assert next_prepared.wait(10)
        log("finish", spec)
        return spec.upper()

    specs = ["a", "b", "c", "d", "e"]
    with ScenePipeline(specs, run, skip=lambda s: s == "d") as pipe:
        assert pipe("a") == "A"
        assert pipe("b") == "B"
        with pytest.raises(ValueError, match="scene c"):
            pipe("c")
        assert pipe("e") == "E"
    streams = [s for what, s in events if what == "stream"]
    assert streams == ["a", "b", "e"]  # in order; c failed before streaming, d was skipped
    assert events.index(("prepare", "b")) < events.index(("finish", "a"))
    assert ("prepare", "d") not in events


def test_device_clock_measures_the_gap_between_turns():
    class Runner:
        input_shape = (1, 2, 4, 4)
        lag = 0

        def run(self, batch):
            return batch

    clock = DeviceClock()
    (r,) = clock.wrap([Runner()])
    assert r.input_shape == (1, 2, 4, 4) and r.lag == 0  # attributes pass through
    turns = DeviceTurns(clock)
    for _ in range(3):
        with turns.ticket():
            r.run(1)
            r.run(2)
    gaps = clock.gaps()
    assert sorted(gaps) == [1, 2] and all(g >= 0 for g in gaps.values())
    assert clock.calls[1][0] >= clock.calls[0][1]


def test_run_emulated_writes_stats_json(sample_catalog, tmp_path):
    from cloudmask.cli import main

    stats = tmp_path / "stats.json"
    r = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "out"),
                                  "--backend", "emulated", "--latency-ms", "1", "--instances", "1",
                                  "--stats-json", str(stats), "--no-quicklook", "--no-progress"])
    assert r.exit_code == 0, r.output
    doc = json.loads(stats.read_text())
    assert len(doc["scenes"]) == 3 and len(doc["device_gaps_s"]) == 2
    for row in doc["scenes"]:
        assert row["calls"] == row["patches"] > 0  # batch 1: one call per patch
        assert row["seconds"]["device"] > 0 and row["seconds"]["total"] > 0
        assert {"device_idle", "read", "blend"} <= set(row["seconds"])
    assert doc["scenes"][0]["seconds"]["device_gap_before"] is None
    assert doc["scenes"][1]["seconds"]["device_gap_before"] >= 0


def test_latency_needs_the_emulated_backend(sample_catalog, tmp_path):
    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(tmp_path / "out"),
                                  "--latency-ms", "5", "--no-progress"])
    assert r.exit_code == 2 and "--backend emulated" in r.output
