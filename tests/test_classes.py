"""The mask contract (cloudmask.classes): values, names, colours and the percentages math."""

from __future__ import annotations

import numpy as np
import pytest

from cloudmask.classes import (
    NODATA,
    THREE_CLASSES,
    ClassTable,
    canonical,
    class_value,
    collapse_names,
    fractions_from_counts,
)
from cloudmask.errors import ConfigError


def test_values_are_fixed_and_aliases_resolve():
    assert [class_value(n) for n in ("clear", "cloud", "shadow", "thin_cloud", "snow")] == [0, 1, 2, 3, 4]
    assert canonical("Thick cloud") == "cloud" and canonical("thin-cloud") == "thin_cloud"
    assert canonical("snow/ice") == "snow"
    with pytest.raises(ValueError, match="thin_cloud"):
        canonical("fog")


def test_table_spans_values_up_to_the_highest_named():
    table = ClassTable.for_names(["cloud", "thin_cloud", "shadow", "clear"])
    assert table.names == ("clear", "cloud", "shadow", "thin_cloud")
    assert ClassTable.for_names(["clear", "cloud", "cloud", "shadow"]) == THREE_CLASSES
    assert ClassTable.for_names(["clear", "snow"]).values == (0, 1, 2, 3, 4)
    assert table.summary() == "0=clear,1=cloud,2=shadow,3=thin_cloud,255=nodata"
    assert ClassTable.from_mapping({0: "clear", 1: "cloud", 2: "shadow", 3: "thin_cloud", 255: "nodata"}) == table
    with pytest.raises(ValueError, match="value 3"):
        ClassTable.from_mapping({0: "clear", 1: "thin_cloud"})


def test_colours_and_category_names():
    table = ClassTable.for_names(["clear", "cloud", "shadow", "thin_cloud"])
    cmap = table.colormap()
    assert set(cmap) == {0, 1, 2, 3, NODATA} and cmap[NODATA][3] == 0 and cmap[1] == (255, 204, 0, 255)
    names = table.category_names()
    assert len(names) == 256 and names[:4] == ["clear", "cloud", "shadow", "thin_cloud"]
    assert names[4] == "" and names[NODATA] == "nodata"
    assert table.band_description() == "cloudmask classes: 0 clear, 1 cloud, 2 shadow, 3 thin_cloud, 255 nodata"


def test_shares_use_valid_pixels_and_nodata_of_all():
    mask = np.array([[0, 0, 1, 3], [2, 255, 255, 255]], np.uint8)
    table = ClassTable.for_names(["clear", "cloud", "shadow", "thin_cloud"])
    shares = table.shares(table.histogram(mask))
    assert shares.total == 8 and shares.valid == 5
    p = shares.percentages
    assert p == {"clear": 40.0, "cloud": 20.0, "shadow": 20.0, "thin_cloud": 20.0, "nodata": 37.5}
    assert shares.cloud_cover == pytest.approx(40.0)  # cloud + thin cloud
    classes = table.stac_classes(shares)
    assert classes[3] == {"value": 3, "name": "thin_cloud", "title": "Thin cloud",
                          "description": classes[3]["description"], "color_hint": "33BFFF",
                          "count": 1, "percentage": 20.0}
    assert classes[-1]["nodata"] is True and classes[-1]["count"] == 3 and classes[-1]["percentage"] == 37.5


def test_all_nodata_has_no_class_shares():
    shares = THREE_CLASSES.shares(np.bincount(np.full(9, NODATA), minlength=256))
    assert shares.valid == 0 and shares.cloud_cover is None
    assert shares.percentages == {"clear": None, "cloud": None, "shadow": None, "nodata": 100.0}
    assert all("percentage" not in c for c in THREE_CLASSES.stac_classes(shares)[:-1])
    assert fractions_from_counts(np.bincount(np.full(9, NODATA), minlength=256))["cloud"] == 0.0


def test_stray_values_are_refused():
    with pytest.raises(ValueError, match=r"values \[3\]"):
        THREE_CLASSES.shares(np.bincount(np.array([0, 3]), minlength=256))


def test_collapse_to_three_classes():
    table = ClassTable.for_names(["clear", "cloud", "shadow", "thin_cloud", "snow"])
    three, lut = table.collapse()
    assert three == THREE_CLASSES
    assert lut[np.array([0, 1, 2, 3, 4, NODATA])].tolist() == [0, 1, 2, 1, 0, NODATA]
    assert collapse_names(["cloud", "thin", "shadow", "clear"], "cloud-shadow") == ("cloud", "cloud", "shadow", "clear")
    assert collapse_names(["thin"], "all") == ("thin_cloud",)
    with pytest.raises(ConfigError, match="cloud-shadow"):
        collapse_names(["clear"], "three")
