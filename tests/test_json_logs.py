"""Issue 24 item 6: one JSON schema for every log line of unattended runs (docs/unattended.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac
import pytest

from cloudmask.console import JSON_BASE, SCENE_FIELDS

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _broken_catalogue(src: Path, dest: Path) -> tuple[Path, str]:
    """A copy of the sample catalogue whose second scene has an unreadable band."""
    shutil.copytree(src.parent, dest)
    items = sorted(pystac.Catalog.from_file(str(dest / "catalog.json")).get_items(recursive=True), key=lambda i: i.id)
    Path(items[1].assets["swir16"].get_absolute_href() or "").write_bytes(os.urandom(4096))
    return dest / "catalog.json", items[1].id


def _json_lines(args: list[str], cwd: Path) -> tuple[int, list[dict[str, Any]]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-m", "cloudmask.cli", "--log-format", "json", "-v", *args],
                         capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    return res.returncode, [json.loads(line) for line in res.stderr.splitlines()]


@pytest.mark.slow
def test_run_and_job_share_one_log_schema(sample_catalog: Path, tmp_path: Path) -> None:
    cat, bad = _broken_catalogue(sample_catalog, tmp_path / "cat")
    (tmp_path / "job.toml").write_text(f'stac = "{cat}"\noutput = "jobout"\n[retries]\ncount = 0\nbackoff = 0\n')
    rc_run, run_lines = _json_lines(["run", "--stac", str(cat), "--out", "runout", "--no-quicklook"], tmp_path)
    rc_job, job_lines = _json_lines(["job", "run", "job.toml"], tmp_path)
    assert rc_run == rc_job == 8

    for line in run_lines + job_lines:
        assert list(line)[:len(JSON_BASE)] == list(JSON_BASE), line
        assert ISO_UTC.match(line["time"]), line["time"]
        datetime.fromisoformat(line["time"])  # a real ISO 8601 instant
    scenes: dict[str, list[dict[str, Any]]] = {}
    for name, lines in (("run", run_lines), ("job", job_lines)):
        scenes[name] = [r for r in lines if r["event"] == "scene"]
        # exactly one line per scene, every key of the schema present
        assert sorted(r["scene"] for r in scenes[name]) == sorted({r["scene"] for r in scenes[name]})
        assert len(scenes[name]) == 3
        for r in scenes[name]:
            assert set(SCENE_FIELDS) <= set(r), r
            if r["scene"] == bad:
                assert r["level"] == "ERROR" and r["status"] == "failed"
                assert r["error_type"] == "ReadError" and r["exit_code"] == 5
            else:
                assert r["level"] == "NOTE" and r["status"] == "done" and r["exit_code"] is None
                assert r["model"] == "ukis-6b-l2a" and isinstance(r["cloud"], float)
    # the line's seconds are the summary's seconds
    job_summary = json.loads((tmp_path / "jobout" / "summary.json").read_text())
    by_scene = {r["scene"]: r for r in job_summary["rows"]}
    for r in scenes["job"]:
        assert r["seconds"] == by_scene[r["scene"]]["seconds"]
    # the same keys, in the same order, in run and job run
    assert {tuple(r) for r in scenes["run"]} == {tuple(r) for r in scenes["job"]}
    for lines in (run_lines, job_lines):  # the run's own end: one error line with the run's exit code
        (end,) = [r for r in lines if r["event"] == "error"]
        assert end["level"] == "ERROR" and end["exit_code"] == 8 and "1 of 3" in end["message"]
