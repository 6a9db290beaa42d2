"""Pictures and class fractions (cloudmask.quicklook): numbers exact, PNGs written and sane."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from cloudmask.console import table
from cloudmask.quicklook import (
    OVERLAY,
    as_rgb,
    class_fractions,
    compare_masks,
    fractions_table,
    mask_agreement,
    overlay,
    plot_fractions,
    plot_scene,
    save_quicklook,
    true_colour,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def mask():
    m = np.zeros((40, 60), np.uint8)
    m[:10] = 1  # 600 cloud
    m[10:15] = 2  # 300 shadow
    m[:, :10] = 255  # 400 nodata; valid: 500 cloud, 250 shadow, 1250 clear
    return m


@pytest.fixture()
def rgb():
    yy, xx = np.mgrid[0:40, 0:60]
    r = np.stack([0.05 + 0.002 * xx, 0.08 + 0.001 * yy, np.full(xx.shape, 0.06)]).astype(np.float32)
    r[:, :, :10] = np.nan
    return r


def test_class_fractions(mask):
    fr = class_fractions(mask)
    valid = 40 * 50
    assert fr["cloud"] == pytest.approx(100 * 500 / valid)
    assert fr["shadow"] == pytest.approx(100 * 250 / valid)
    assert fr["clear"] == pytest.approx(100 * (valid - 750) / valid)
    assert fr["nodata"] == pytest.approx(100 * 400 / mask.size)
    where = np.zeros(mask.shape, bool)
    where[:10, 10:] = True
    assert class_fractions(xr.DataArray(mask, dims=("y", "x")), where=where)["cloud"] == 100.0
    assert class_fractions(np.full((3, 3), 255, np.uint8))["cloud"] == 0.0


def test_table_and_agreement(mask):
    other = mask.copy()
    other[20:30, 10:20] = 1  # 100 clear -> cloud
    rows = fractions_table({"a": mask, "b": other})
    assert [r["name"] for r in rows] == ["a", "b"]
    text = table(rows)
    assert text.splitlines()[0].split() == ["name", "clear", "cloud", "shadow", "nodata"]
    agree = mask_agreement(mask, other)
    assert agree["valid_pixels"] == 2000
    assert agree["agreement"] == pytest.approx(100 * 1900 / 2000)
    assert agree["confusion"][0][1] == 100


def test_true_colour_and_overlay(rgb, mask):
    tc = true_colour(rgb)
    assert tc.shape == (40, 60, 3) and tc.min() >= 0 and tc.max() <= 1
    assert np.all(tc[:, :10] == 0)  # nodata is black before the overlay
    ds = xr.Dataset({b: (("y", "x"), rgb[i]) for i, b in enumerate(("red", "green", "blue"))})
    np.testing.assert_array_equal(as_rgb(ds), rgb)
    out = overlay(tc, mask)
    r, g, b, a = OVERLAY[1]
    np.testing.assert_allclose(out[5, 30], (1 - a) * tc[5, 30] + a * np.array([r, g, b]))
    np.testing.assert_array_equal(out[30, 30], tc[30, 30])  # clear is left as is


def test_pngs_are_written(tmp_path, rgb, mask):
    import matplotlib.image as mpimg

    path = save_quicklook(rgb, mask, tmp_path / "q.png", title="test")
    assert path.read_bytes()[:8] == PNG
    img = mpimg.imread(path)
    assert img.shape[1] > img.shape[0]  # two panels side by side
    assert not list(tmp_path.glob(".*tmp*"))
    compare_masks(mask, np.where(mask == 2, 0, mask).astype(np.uint8), rgb, ("a", "b"), path=tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    plot_scene(rgb, mask, path=tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG


def test_plots_for_notebooks(rgb, mask):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = compare_masks(mask, mask, rgb)
    assert fig.number in plt.get_fignums()  # a pyplot figure, so Jupyter shows it inline
    ax = plot_fractions({"x": class_fractions(mask), "y": class_fractions(mask)})
    assert len(ax.patches) >= 6
    plt.close("all")


def test_classes_beyond_three_in_numbers_legend_and_pictures(tmp_path, rgb, mask):
    import matplotlib.image as mpimg

    from cloudmask.classes import ClassTable
    from cloudmask.quicklook import legend_labels, table_of

    four = mask.copy()
    four[30:40, 10:] = 3  # 500 thin cloud (taken from clear)
    assert table_of(mask).names == ("clear", "cloud", "shadow")
    assert table_of(four).names == ("clear", "cloud", "shadow", "thin_cloud")
    snow = four.copy()
    snow[0, 59] = 4
    assert table_of(snow).names[-1] == "snow"
    with pytest.raises(ValueError, match="mask value 7"):
        table_of(np.full((2, 2), 7, np.uint8))
    da = xr.DataArray(mask, dims=("y", "x"), attrs=ClassTable.for_names(["clear", "thin_cloud"]).cf_attrs())
    assert table_of(da).names[-1] == "thin_cloud"  # the attrs say so even where no pixel is thin cloud
    fr = class_fractions(four)
    assert fr["thin_cloud"] == pytest.approx(100 * 500 / 2000) and fr["clear"] == pytest.approx(100 * 750 / 2000)
    labels = [label for _, label in legend_labels(four)]
    assert labels == ["cloud 25.0 %", "shadow 12.5 %", "thin cloud 25.0 %", "clear 37.5 %", "nodata 16.7 % of scene"]
    rows = fractions_table({"three": mask, "four": four})
    assert table(rows).splitlines()[0].split() == ["name", "clear", "cloud", "shadow", "thin_cloud", "nodata"]
    assert rows[0]["thin_cloud"] == 0.0
    agree = mask_agreement(mask, four)
    assert agree["classes"] == ["clear", "cloud", "shadow", "thin_cloud"] and agree["confusion"][0][3] == 500
    out = overlay(true_colour(rgb), four)
    assert not np.allclose(out[35, 30], true_colour(rgb)[35, 30])  # thin cloud is drawn
    from cloudmask.quicklook import save_thumbnail

    big = np.kron(four, np.ones((10, 10), np.uint8))  # 400 x 600
    thumb = mpimg.imread(save_thumbnail(np.kron(rgb, np.ones((1, 10, 10), np.float32)), big, tmp_path / "t.png"))
    assert thumb.shape[:2] == (134, 200) and not list(tmp_path.glob(".*tmp*"))  # every 3rd pixel: <= 256
    path = save_quicklook(rgb, four, tmp_path / "q4.png")
    assert mpimg.imread(path).shape[2] in (3, 4)
    ax = plot_fractions(rows)
    assert "thin_cloud" in [t.get_text() for t in ax.get_legend().get_texts()]
    import matplotlib.pyplot as plt

    plt.close("all")
