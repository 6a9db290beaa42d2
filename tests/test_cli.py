"""The command line as a user runs it: demo, models, run, and one-line errors with exit codes."""

from __future__ import annotations

import json

import pystac
import pytest
import rasterio
from click.testing import CliRunner

from cloudmask.cli import main


@pytest.fixture()
def cli():
    return CliRunner()


def test_models_lists_builtins(cli):
    res = cli.invoke(main, ["models"])
    assert res.exit_code == 0
    for name in ("ukis-4b-l1c", "ukis-4b-l2a", "ukis-6b-l1c", "ukis-6b-l2a"):
        assert name in res.output


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_demo_masks_every_scene(cli, tmp_path):
    out = tmp_path / "demo"
    res = cli.invoke(main, ["demo", "--out", str(out), "--sample-dir", str(tmp_path / "sample"),
                            "--size", "600", "--no-progress"])
    assert res.exit_code == 0, res.output
    masks = sorted(out.glob("*_cloudmask.tif"))
    assert len(masks) == 3
    for m in masks:
        assert m.name.split("_cloudmask")[0] in res.output
        assert (out / m.name.replace("_cloudmask.tif", "_quicklook.png")).exists()
        with rasterio.open(m) as ds:
            assert ds.dtypes == ("uint8",) and ds.nodata == 255
    header = [ln for ln in res.output.splitlines() if ln.startswith("scene")][0]
    assert header.split() == ["scene", "model", "res_m", "cloud", "shadow", "clear", "nodata", "agree", "%",
                              "seconds", "mask"]
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert len(list(cat.get_items(recursive=True))) == 3


def test_run_on_static_catalogue(cli, sample_catalog, tmp_path):
    out = tmp_path / "run"
    res = cli.invoke(main, ["run", "--stac", str(sample_catalog), "--collection", "sentinel-2-c1-l2a",
                            "--limit", "1", "--out", str(out), "--model", "ukis-4b-l2a", "--stats",
                            "--no-quicklook", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(list(out.glob("*_cloudmask.tif"))) == 1
    assert "device" in res.output  # --stats table


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--model", "nope"], 3, "unknown model"),
        (["--stac", "/no/such/catalog.json"], 4, "does not exist"),
        (["--bbox", "1,2,3"], 2, "--bbox"),
    ],
)
def test_bad_input_one_line_error(cli, sample_catalog, tmp_path, args, code, words):
    base = {"--stac": str(sample_catalog), "--out": str(tmp_path / "o"), "--model": "ukis-6b-l2a"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        base[k] = v
    argv = ["run", "--no-progress"] + [x for kv in base.items() for x in kv]
    res = cli.invoke(main, argv)
    assert res.exit_code == code, res.output
    err_lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1 and words in err_lines[0]
    assert not list((tmp_path / "o").glob("*.tif")) if (tmp_path / "o").exists() else True


def test_item_missing_band_fails_cleanly(cli, sample_catalog, tmp_path):
    cat = pystac.Catalog.from_file(str(sample_catalog))
    item = next(iter(cat.get_items(recursive=True))).clone()
    item.make_asset_hrefs_absolute()
    del item.assets["swir22"]
    single = tmp_path / "single"
    c = pystac.Catalog("one", "one scene")
    c.add_item(item)
    c.normalize_and_save(str(single), pystac.CatalogType.ABSOLUTE_PUBLISHED)
    res = cli.invoke(main, ["run", "--stac", str(single / "catalog.json"), "--out", str(tmp_path / "o"),
                            "--model", "ukis-6b-l2a", "--no-progress"])
    # the scene fails alone (its row names the band); the batch exits with the failed-scene code
    assert res.exit_code == 8, res.output
    assert "swir22" in res.output
    assert res.output.strip().splitlines()[-1].startswith("error: 1 of 1 scenes failed")
    assert not list((tmp_path / "o").glob("*.tif"))
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["failed"] == 1 and "swir22" in summary["rows"][0]["error"]


def test_log_format_json(cli, sample_catalog, tmp_path):
    res = cli.invoke(main, ["-v", "--log-format", "json", "run", "--stac", str(sample_catalog), "--limit", "1",
                            "--out", str(tmp_path / "o"), "--backend", "emulated", "--no-quicklook",
                            "--no-progress"])
    assert res.exit_code == 0, res.output
    logs = [json.loads(ln) for ln in res.output.splitlines() if ln.startswith("{")]
    assert logs and all({"level", "message", "logger"} <= set(d) for d in logs)


def test_demo_with_relative_sample_dir(cli, tmp_path, monkeypatch):
    """As `make demo` runs it: relative paths for the sample catalogue and the output."""
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(main, ["demo", "--out", "out/demo", "--sample-dir", "data/sample", "--size", "300",
                            "--scenes", "1", "--no-progress", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "out" / "demo").glob("*_cloudmask.tif"))) == 1
