"""Issue 24 item 8: what a person sees on a terminal: bare lines, the writing phase, progress while the
synthetic scenes are made."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from rich.console import Console

from cloudmask import console
from cloudmask.sample import make_catalog


@pytest.fixture()
def terminal(monkeypatch: pytest.MonkeyPatch):
    """stderr as a 100-column terminal drawn into a buffer."""
    buf = io.StringIO()
    monkeypatch.setitem(console._state, "console", Console(file=buf, force_terminal=True, width=100, color_system=None))
    yield buf
    console.setup_logging(0, "plain")


def test_terminal_lines_have_no_level_prefix(terminal: io.StringIO) -> None:
    console.setup_logging(0, "plain")
    console.note("output catalogue: out/catalog.json")
    console.scene_result({"scene": "S2A_x", "status": "done", "seconds": 1.5, "cloud": 12.0, "shadow": 1.0})
    logging.getLogger("cloudmask.models").warning("model m was trained on L1C")
    lines = [ln.rstrip() for ln in terminal.getvalue().splitlines() if ln.strip()]
    assert lines[0] == "output catalogue: out/catalog.json"  # not "NOTE     output catalogue: ..."
    assert lines[1].startswith("done S2A_x in 1.5 s (cloud 12.0 %")
    assert lines[2].startswith("warning: model m was trained on L1C")
    assert not any("NOTE" in ln for ln in lines)


def test_scene_bar_shows_the_writing_phase(terminal: io.StringIO) -> None:
    with console.BatchProgress(2, enabled=True) as bar, bar.scene("S2A_first") as cb:
        assert cb is not None
        cb(3, 10)
        assert "writing" not in terminal.getvalue()
        cb(10, 10)  # every patch through the model: the COG, quicklook and item are being written
        bar._progress.refresh()  # type: ignore[union-attr]
        assert "S2A_first writing" in terminal.getvalue()


def test_synthetic_scenes_report_progress(tmp_path: Path, terminal: io.StringIO) -> None:
    calls: list[tuple[int, int]] = []
    make_catalog(tmp_path / "cat", n_scenes=2, size=60, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    calls.clear()
    make_catalog(tmp_path / "cat", n_scenes=2, size=60, progress=lambda d, t: calls.append((d, t)))
    assert calls == []  # current: nothing to make
    with console.task_progress("making synthetic scenes", enabled=True) as made:
        assert made is not None
        make_catalog(tmp_path / "other", n_scenes=2, size=60, progress=made)
    assert "making synthetic scenes" in terminal.getvalue() and "2/2" in terminal.getvalue()
