"""Calibration set drawn from STAC scenes through the reader: 200 patches, >= 3 scenes, every class."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cloudmask.cli import main


@pytest.mark.slow  # two minutes on two cores: 1800 px scenes
def test_calibration_from_sample_catalogue(tmp_path, sample_catalogs):
    cat = sample_catalogs(1800)  # three scenes, the second with a 35 % nodata wedge
    out = tmp_path / "calib"
    res = CliRunner().invoke(main, ["metis", "calibration", "--stac", str(cat), "--model", "ukis-6b-l2a",
                                    "--out", str(out), "--samples", "200", "--stride", "48"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    items = manifest["items"]
    assert len(items) == 200
    assert len({it["scene_id"] for it in items}) >= 3
    groups = {"clear": ("clear_land", "water"), "cloud": ("thick_cloud", "thin_cloud"), "shadow": ("shadow",)}
    for cls, keys in groups.items():
        assert any(sum(it["class_mix"][k] for k in keys) > 0.05 for it in items), cls
    assert len({it["stratum"] for it in items}) >= 3
    assert any(it["nodata_fraction"] > 0 for it in items)  # scene edges with nodata
    x = np.load(out / items[0]["file"])
    assert x.dtype == np.float32 and x.shape == (1, 6, 256, 256)
    assert np.isfinite(x).all()
