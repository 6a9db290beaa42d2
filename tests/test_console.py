"""What the CLI writes on stderr: JSON lines only with --log-format json, notes, warnings once, bars."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cloudmask import console


@pytest.fixture()
def restore_logging():
    yield
    console.setup_logging(0, "plain")


def test_json_stderr_is_json_line_by_line(sample_catalog: Path, tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cloudmask.cli", "--log-format", "json", "run", "--stac", str(sample_catalog),
         "--out", str(tmp_path / "o"), "--limit", "2", "--stats", "--progress"],
        capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(line) for line in res.stderr.splitlines()]  # every line is JSON (no bars, no text)
    done = [r for r in records if r.get("status") == "done"]
    assert len(done) == 2
    for r in done:
        assert {"scene", "model", "seconds", "cloud", "shadow", "clear", "nodata"} <= set(r)
        assert isinstance(r["cloud"], float) and isinstance(r["seconds"], float)
    stats = [r for r in records if "stats" in r]
    assert len(stats) == 2 and stats[0]["stats"]["patches"] > 0
    assert "numpy" not in res.stderr and "np.float" not in res.stderr


def test_json_error_line(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "cloudmask.cli", "--log-format", "json", "run", "--stac",
         str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 4
    (line,) = res.stderr.strip().splitlines()
    rec = json.loads(line)
    assert rec["level"] == "ERROR" and rec["exit_code"] == 4 and "does not exist" in rec["message"]


def test_each_warning_once_and_numpy_values_as_json(restore_logging, capsys) -> None:
    console.setup_logging(0, "json")
    log = logging.getLogger("cloudmask.models")
    for _ in range(3):
        log.warning("model %s was trained on L2A", "ukis-6b-l2a")
    log.warning("another warning")
    console.note("shares", cloud=np.float32(12.5), counts=np.array([1, 2], np.int64))
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
    assert [r["message"] for r in lines] == ["model ukis-6b-l2a was trained on L2A", "another warning", "shares"]
    assert lines[-1]["cloud"] == 12.5 and lines[-1]["counts"] == [1, 2]


def test_batch_progress_draws_overall_and_scene_bars(restore_logging, monkeypatch) -> None:
    buf = io.StringIO()
    monkeypatch.setitem(console._state, "console", Console(file=buf, force_terminal=True, width=100))
    with console.BatchProgress(2, enabled=True) as bar:
        with bar.scene("S2A_first") as cb:
            assert cb is not None
            cb(5, 10)
        bar.skip()
    out = buf.getvalue()
    assert "scenes" in out and "S2A_first" in out and "2/2" in out


def test_batch_progress_off_in_json_mode(restore_logging) -> None:
    console.setup_logging(0, "json")
    with console.BatchProgress(3, enabled=True) as bar, bar.scene("x") as cb:
        assert cb is None


def _options(cmd, path=("cloudmask",)):
    import click

    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _options(sub, (*path, name))
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            yield " ".join(path), p


def test_every_option_default_is_shown_in_help() -> None:
    """A default that is not stated in --help is a default users cannot know (help must match behaviour)."""
    from click.core import UNSET

    from cloudmask.cli import main

    hidden = []
    for where, opt in _options(main):
        if opt.required or opt.default in (None, False, (), UNSET) or (opt.is_flag and not opt.secondary_opts):
            continue
        if not (opt.show_default or "default" in (opt.help or "").lower()):
            hidden.append(f"{where} {opt.opts[0]} (default {opt.default!r})")
    assert hidden == []
