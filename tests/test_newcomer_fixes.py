"""Issue 24 item 10: the smaller things a newcomer hit (datetime windows, derived_from, summary paths,
catalogue when every scene fails, the shipped example model, model extras, help texts, dependencies)."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from datetime import UTC, datetime
from importlib.metadata import packages_distributions
from pathlib import Path

import click
import pystac
import pytest
from click.testing import CliRunner

from cloudmask.batch import mask_many
from cloudmask.cli import main
from cloudmask.errors import ReadError
from cloudmask.stac.query import parse_datetime, resolve_datetime

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 3, 31, 12, tzinfo=UTC)


# ------------------------------------------------------------------------------------------ datetime


@pytest.mark.parametrize(("value", "start"), [
    ("P1M", "2024-02-29T12:00:00Z"),  # a calendar month back from 31 March
    ("P1Y", "2023-03-31T12:00:00Z"),
    ("last 2 months", "2024-01-31T12:00:00Z"),
    ("past 1 year", "2023-03-31T12:00:00Z"),
    ("P1Y2M10DT2H", "2023-01-21T10:00:00Z"),
    ("P10D", "2024-03-21T12:00:00Z"),
])
def test_calendar_windows_and_iso_durations(value: str, start: str) -> None:
    assert resolve_datetime(value, NOW) == f"{start}/2024-03-31T12:00:00Z"
    lo, hi = parse_datetime(value, NOW)
    assert lo is not None and hi == NOW


def test_cli_search_accepts_a_month_window(sample_catalog: Path) -> None:
    res = CliRunner().invoke(main, ["search", "--stac", str(sample_catalog), "--datetime", "P1M"])
    assert res.exit_code == 0, res.output  # refused before ("cannot read datetime 'P1M'")
    res = CliRunner().invoke(main, ["search", "--stac", str(sample_catalog), "--datetime", "last 2 months"])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------------------ derived_from


def test_derived_from_keeps_the_canonical_href(sample_items: list, tmp_path: Path) -> None:
    from cloudmask.output_catalog import _source_href
    from cloudmask.profiles import scene_spec

    item = sample_items[0].clone()
    item.set_self_href("https://api.example.test/collections/s2/items/x")
    item.add_link(pystac.Link("canonical", "https://static.example.test/s2/x.json"))
    assert _source_href(scene_spec(item), tmp_path / "items") == "https://static.example.test/s2/x.json"
    local = sample_items[0].clone()  # an absolute canonical path is the item's own word: kept as is
    local.add_link(pystac.Link("canonical", "/archive/s2/x.json"))
    assert _source_href(scene_spec(local), tmp_path / "items") == "/archive/s2/x.json"


# ------------------------------------------------------------------------- summary paths, empty catalogue


def test_summary_mask_paths_are_relative_to_the_output_folder(sample_catalog: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudmask.jobs import load_spec, run_job

    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--limit", "1", "--out", "deep/run",
                                    "--no-quicklook", "--backend", "emulated"])
    assert res.exit_code == 0, res.output
    (row,) = json.loads((tmp_path / "deep/run/summary.json").read_text())["rows"]
    assert row["mask"] == f"{row['scene']}_cloudmask.tif" and (tmp_path / "deep/run" / row["mask"]).is_file()

    spec = tmp_path / "job.toml"
    spec.write_text(f'stac = "{sample_catalog}"\noutput = "jobout"\nlimit = 1\nbackend = "emulated"\n')
    run_job(load_spec(spec))
    doc = json.loads((tmp_path / "jobout/summary.json").read_text())
    for r in doc["rows"] + doc["scenes"]:  # one summary schema for run and job run (issue 21)
        assert r["mask"] == f"{r['scene']}_cloudmask.tif", r
    assert f"\n{doc['scenes'][0]['scene']},done" in (tmp_path / "jobout/summary.csv").read_text()
    assert ",jobout/" not in (tmp_path / "jobout/summary.csv").read_text()


def test_catalogue_is_written_when_every_scene_fails(sample_items: list, tmp_path: Path) -> None:
    from cloudmask.profiles import scene_spec

    def fail(spec: object) -> dict:
        raise ReadError("unreadable band")

    report = mask_many([scene_spec(it) for it in sample_items], tmp_path / "out", fail)
    assert [r["status"] for r in report.rows] == ["failed"] * len(sample_items)
    assert report.catalog == tmp_path / "out" / "catalog.json"
    cat = pystac.Catalog.from_file(str(report.catalog))
    assert list(cat.get_items(recursive=True)) == [] and len(list(cat.get_children())) == 1


# ------------------------------------------------------------------------------------------- models


def test_shipped_spectral_mlp_is_a_model_name(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.jobs.spec import spec_from_dict
    from cloudmask.models import load_model

    card = load_model("spectral-mlp")
    assert card.kind == "pixel" and card.onnx_path.is_file()
    spec_from_dict({"stac": str(sample_catalog), "output": str(tmp_path), "model": "spectral-mlp"}, base=tmp_path)
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0 and re.search(r"^spectral-mlp\s", res.output, re.M), res.output


def test_models_say_which_extra_they_need() -> None:
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0
    header, *_ = res.output.splitlines()
    assert "needs" in header
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("s2cloudless ")]
    assert "[s2cloudless]" in line
    assert all("[" not in ln for ln in res.output.splitlines() if ln.startswith("ukis-"))


# --------------------------------------------------------------------------------------------- help


def _all_options(cmd: click.Command, path: tuple[str, ...] = ("cloudmask",)):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _all_options(sub, (*path, name))
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden:
            yield " ".join(path), p


def test_every_option_has_help() -> None:
    missing = [f"{where} {opt.opts[0]}" for where, opt in _all_options(main)
               if not (opt.help or "").strip() and opt.name not in ("help", "version")]
    assert missing == []
    opts = {(w, o.opts[0]): o for w, o in _all_options(main)}
    for token in ("P1M", "last 2 months", "2024-06-01/2024-06-30"):
        assert token in (opts[("cloudmask run", "--datetime")].help or "")
    blend = opts[("cloudmask run", "--blend")].help or ""
    assert all(k in blend for k in ("tukey", "linear", "hard"))


# -------------------------------------------------------------------------------------- dependencies


def test_every_runtime_dependency_is_imported() -> None:
    """A runtime dependency the package never imports belongs in an extra (rio-cogeo: tests only)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[\[<>=!~ ;]", d)[0].lower().replace("_", "-") for d in deps}
    modules = set()
    for path in (REPO / "cloudmask").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = packages_distributions()
    imported = {d.lower().replace("_", "-") for m in modules for d in dists.get(m, [])}
    # ukis-csmask ships the U-Nets' ONNX files, read with importlib.resources (models.py), not imported
    assert declared - imported - {"ukis-csmask"} == set()
