"""The one table formatter (cloudmask.console.table, rich.Table): fits a terminal, plain and uncut when piped."""

from __future__ import annotations

import shutil
import sys
from types import SimpleNamespace

from click.testing import CliRunner

from cloudmask import console, quicklook
from cloudmask.cli import main
from cloudmask.profiles import describe_rule, list_profiles

LONG = "/data/masks/" + "very-long-folder-name/" * 6 + "S2B_MSIL2A_20240615T103629_N0510_R008_T32TMT_cloudmask.tif"
ROWS = [{"scene": "S2B_32TMT_20240615", "cloud": 43.57, "shadow": 3.2, "mask": LONG},
        {"scene": "S2A_32TMT_20240610", "cloud": 9, "shadow": None, "mask": "b.tif"}]


def test_piped_tables_are_plain_and_never_cut_a_cell():
    text = console.table(ROWS, ["scene", "cloud", "shadow", "mask"])
    lines = text.splitlines()
    assert len(LONG) > 80 and LONG in text  # the old formatter cut every cell at 80 characters
    assert lines[0].split() == ["scene", "cloud", "shadow", "mask"] and set(lines[1]) <= {"-", " "}
    assert len(lines) == 4 and lines[2].split() == ["S2B_32TMT_20240615", "43.57", "3.2", LONG]
    assert "\x1b[" not in text and all(ln == ln.rstrip() for ln in lines)  # no colour codes, no trailing blanks
    assert lines[3].index("9") + 1 == lines[2].index("43.57") + len("43.57")  # numbers right-aligned


def test_a_terminal_table_fits_the_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stdout", SimpleNamespace(isatty=lambda: True, write=lambda s: None))
    monkeypatch.setattr(shutil, "get_terminal_size", lambda *a: SimpleNamespace(columns=60, lines=20))
    text = console.table(ROWS, ["scene", "cloud", "shadow", "mask"])
    plain = [ln for ln in _strip_ansi(text).splitlines() if ln.strip()]
    assert max(len(ln) for ln in plain) <= 60
    assert "".join(ln.split()[-1] for ln in plain if ln.strip()).count("very-long-folder-name") == 6  # wrapped, whole
    assert len(console.table(ROWS, width=40).splitlines()[2]) <= 40  # an explicit width wins


def test_in_a_notebook_the_table_is_returned_not_displayed(monkeypatch):
    """rich displays straight into Jupyter unless told not to: table() must still return the text."""
    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    assert console.table(ROWS, ["scene", "cloud"]).splitlines()[0].split() == ["scene", "cloud"]


def test_profiles_show_every_detection_rule_in_full():
    res = CliRunner().invoke(main, ["profiles"])
    assert res.exit_code == 0, res.output
    for p in list_profiles():
        assert "; or ".join(describe_rule(r) for r in p.detect) in res.output


def test_one_formatter():
    assert not hasattr(quicklook, "format_table")
    assert console.table([{"a": 1}]).splitlines()[0] == "a"


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
