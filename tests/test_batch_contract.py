"""`run` and `job run` keep one on-disk contract: one summary.json schema, one quicklook policy, retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloudmask import quicklook
from cloudmask.cli import main
from cloudmask.errors import ReadError
from cloudmask.retry import RetryPolicy

from .test_jobs import write_spec


def _run(catalog: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(main, ["run", "--stac", str(catalog), "--out", str(out), "--backend", "emulated",
                                     "--no-progress", *extra])


def _job(tmp_path: Path, catalog: Path, **kw: Any) -> Any:
    from cloudmask.jobs import load_spec, run_job

    return run_job(load_spec(write_spec(tmp_path / "job" / "job.toml", catalog, backend="emulated", **kw)),
                   raise_on_failure=False)


def _keys(rows: list[dict[str, Any]]) -> set[str]:
    return set().union(*(set(r) for r in rows))


def test_run_and_job_write_one_summary_schema(tmp_path, sample_catalog):
    res = _run(sample_catalog, tmp_path / "run", "--no-quicklook")
    assert res.exit_code == 0, res.output
    _job(tmp_path, sample_catalog)
    by_run = json.loads((tmp_path / "run" / "summary.json").read_text())
    by_job = json.loads((tmp_path / "job" / "out" / "summary.json").read_text())
    assert set(by_run) == set(by_job) == {"job", "finished", "found", "done", "skipped", "failed", "run", "rows",
                                          "scenes"}
    assert set(by_run["run"]) == set(by_job["run"])
    assert by_run["job"] is None and by_job["job"] == "job"
    for doc in (by_run, by_job):
        assert doc["found"] == doc["done"] == 3 and len(doc["rows"]) == len(doc["scenes"]) == 3
        assert doc["run"]["processed"] == 3 and all(r["attempts"] == 1 for r in doc["rows"])
        assert all(not Path(r["mask"]).is_absolute() for r in doc["rows"])
    common = {"scene", "status", "cloud", "shadow", "clear", "nodata", "seconds", "mask", "attempts", "model"}
    assert common <= _keys(by_run["rows"]) and common <= _keys(by_job["rows"])
    csv_run = (tmp_path / "run" / "summary.csv").read_text().splitlines()
    csv_job = (tmp_path / "job" / "out" / "summary.csv").read_text().splitlines()
    assert csv_run[0] == csv_job[0] and len(csv_run) == len(csv_job) == 4

    again = _job(tmp_path, sample_catalog)  # all done: this run's rows say skipped
    doc = json.loads((tmp_path / "job" / "out" / "summary.json").read_text())
    assert again.skipped == 3 and doc["skipped"] == 3 and {r["status"] for r in doc["rows"]} == {"skipped"}


def _undrawable(monkeypatch: pytest.MonkeyPatch) -> None:
    if not quicklook.available():
        pytest.skip("quicklooks need matplotlib")

    def broken(*_a: Any, **_k: Any) -> Any:
        raise ValueError("no RGB bands to draw")

    monkeypatch.setattr(quicklook, "read_rgb", broken)


def _items(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "items").glob("*.json"))]


def test_a_quicklook_that_cannot_be_drawn_is_noted_in_run_and_job(tmp_path, sample_catalog, monkeypatch):
    _undrawable(monkeypatch)
    res = _run(sample_catalog, tmp_path / "run", "--limit", "1")
    assert res.exit_code == 0, res.output  # done without its quicklook, as a job does
    report = _job(tmp_path, sample_catalog, quicklook=True, max_cloud=100)
    assert not report.failed
    for out in (tmp_path / "run", tmp_path / "job" / "out"):
        items = _items(out)
        assert items and all("no RGB bands" in it["properties"]["cloudmask:quicklook_error"] for it in items)
        assert all("quicklook" not in it["assets"] for it in items)


def test_a_quicklook_that_cannot_be_written_fails_the_scene_in_run_and_job(tmp_path, sample_catalog, monkeypatch):
    if not quicklook.available():
        pytest.skip("quicklooks need matplotlib")

    def full(*_a: Any, **_k: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(quicklook, "save_quicklook", full)
    res = _run(sample_catalog, tmp_path / "run", "--limit", "1")
    assert res.exit_code != 0 and not _items(tmp_path / "run")
    report = _job(tmp_path, sample_catalog, quicklook=True)
    assert report.failed and not report.processed


def test_run_retries_a_transient_failure_like_a_job(tmp_path, sample_catalog, monkeypatch):
    import cloudmask.api as api

    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt: 0.0)
    real = api.mask_scene_spec
    failed: set[str] = set()

    def flaky(spec: Any, *a: Any, **k: Any) -> Any:
        if spec.id not in failed:
            failed.add(spec.id)
            raise ReadError(f"{spec.id}: connection reset while reading B04")
        return real(spec, *a, **k)

    monkeypatch.setattr(api, "mask_scene_spec", flaky)
    res = _run(sample_catalog, tmp_path / "once", "--no-quicklook", "--limit", "1")
    assert res.exit_code == 8  # no retries by default
    failed.clear()
    res = _run(sample_catalog, tmp_path / "run", "--no-quicklook", "--retries", "1")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "run" / "summary.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["done"] * 3 and all(r["attempts"] == 2 for r in rows)
