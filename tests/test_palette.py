"""Issue 24 item 9: one palette (the mask contract's) for the COG colour table, STAC color_hint and the
quicklook; the quicklook legend beside the image, not over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from odc.geo.geobox import GeoBox

from cloudmask.classes import MASK_CLASSES, NODATA, NODATA_CLASS, ClassTable
from cloudmask.quicklook import CLASS_COLOURS, OVERLAY, plot_mask
from cloudmask.writer import CogSink

ALL = ClassTable.for_names([c.name for c in MASK_CLASSES])


def test_cog_colour_table_stac_and_quicklook_share_one_palette(tmp_path: Path) -> None:
    gb = GeoBox.from_bbox((399960, 4797000, 400920, 4797960), "EPSG:32631", resolution=30)
    mask = (np.arange(gb.shape[0] * gb.shape[1]) % 6).astype(np.uint8).reshape(gb.shape)
    mask[mask == 5] = NODATA
    path = tmp_path / "m_cloudmask.tif"
    with CogSink(path, gb, classes=ALL) as sink:
        sink.write_block(0, mask, None)
    with rasterio.open(path) as ds:
        cog = ds.colormap(1)
    hints = {c["value"]: c["color_hint"] for c in ALL.stac_classes()}
    for c in (*MASK_CLASSES, NODATA_CLASS):
        rgb255 = tuple(round(v * 255) for v in CLASS_COLOURS[c.name])
        assert rgb255 == c.colour, c.name  # bars, difference maps
        if c.value in OVERLAY:  # the quicklook overlay and outlines
            assert tuple(round(v * 255) for v in OVERLAY[c.value][:3]) == c.colour, c.name
        assert hints[c.value] == "".join(f"{v:02X}" for v in c.colour), c.name
        if c.value != NODATA:  # what QGIS shows (nodata is transparent there)
            assert cog[c.value][:3] == c.colour, c.name
    # the colours tell the classes apart
    assert len({c.colour for c in (*MASK_CLASSES, NODATA_CLASS)}) == len(MASK_CLASSES) + 1


def test_quicklook_legend_is_beside_the_image() -> None:
    mask = np.zeros((200, 200), np.uint8)
    mask[:, 120:] = 1  # cloud along the right edge, where the legend used to sit
    mask[150:, :] = 2
    rgb = np.full((3, 200, 200), 0.1, np.float32)
    ax = plot_mask(rgb, mask, "m", classes=ALL)
    fig = ax.figure
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    image = ax.images[0].get_window_extent(renderer)
    legend = ax.get_legend().get_window_extent(renderer)
    assert not image.overlaps(legend), (image, legend)
