"""Issue 24 item 11: output items, the collection and MLM model cards are built with pystac's extension
helpers and read back through them; the README's stackstac and odc-stac recipes load the masks."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner
from pystac.extensions import mlm
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension

from cloudmask import mlm as cm_mlm
from cloudmask import output_catalog
from cloudmask.cli import main
from cloudmask.models import load_model


@pytest.fixture(scope="module")
def masks(sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ext") / "masks"
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(out), "--limit", "2",
                                    "--backend", "emulated", "--no-quicklook", "--probabilities"])
    assert res.exit_code == 0, res.output
    return out


def test_items_and_collection_read_back_through_pystac_helpers(masks: Path) -> None:
    cat = pystac.Catalog.from_file(str(masks / "catalog.json"))
    (coll,) = cat.get_children()
    assert isinstance(coll, pystac.Collection)
    items = list(coll.get_items())
    assert len(items) == 2
    for item in items:
        proj = ProjectionExtension.ext(item)
        assert proj.code == "EPSG:32631" and proj.shape is not None and proj.transform is not None
        mask = item.assets["mask"]
        (band,) = RasterExtension.ext(mask).bands or []
        assert band.nodata == 255 and band.data_type == "uint8" and band.spatial_resolution == 30.0
        classes = ClassificationExtension.ext(mask).classes
        assert [c.name for c in classes] == ["clear", "cloud", "shadow", "nodata"]
        assert sum(c.count or 0 for c in classes) == proj.shape[0] * proj.shape[1]
        assert (FileExtension.ext(mask).checksum or "").startswith("1220")
        assert FileExtension.ext(mask).size == (masks / Path(mask.href).name).stat().st_size
        assert EOExtension.ext(item).cloud_cover is not None
        assert len(RasterExtension.ext(item.assets["probabilities"]).bands or []) == 3
    # the collection's summaries and item_assets through the same helpers (declared, so readable)
    assert ProjectionExtension.summaries(coll).code == ["EPSG:32631"]
    clouds = EOExtension.summaries(coll).cloud_cover
    assert clouds is not None and clouds.minimum <= clouds.maximum
    assert [c.name for c in ClassificationExtension.summaries(coll).classes or []][:3] == ["clear", "cloud", "shadow"]
    mask_def = coll.item_assets["mask"]
    assert RasterExtension.ext(mask_def).bands[0].nodata == 255  # type: ignore[index]
    assert [c.value for c in ClassificationExtension.ext(mask_def).classes] == [0, 1, 2, 255]


def test_no_hand_built_extension_fields() -> None:
    """Fields of the extensions pystac has helpers for are not spelt out by hand any more."""
    sources = {"output_catalog.mask_item": inspect.getsource(output_catalog.mask_item),
               "output_catalog._item_assets": inspect.getsource(output_catalog._item_assets),
               "output_catalog._summaries": inspect.getsource(output_catalog._summaries),
               "output_catalog.update_output_catalog": inspect.getsource(output_catalog.update_output_catalog),
               "mlm.card_to_mlm": inspect.getsource(cm_mlm.card_to_mlm)}
    # a field written or read by name: a dict key ("proj:code": ...) or a subscript (x["proj:code"])
    ns = r"(?:proj|raster|file|classification|eo|mlm)"
    field = re.compile(rf"[\"']{ns}:\w+[\"']\s*:|[\w)\]]\[\s*[\"']{ns}:\w+[\"']\s*\]|get\([\"']{ns}:")
    found = {name: field.findall(src) for name, src in sources.items() if field.search(src)}
    assert found == {}, found


def test_mlm_card_reads_back_through_pystac_mlm(tmp_path: Path) -> None:
    card = load_model("spectral-mlp")
    item = pystac.Item.from_dict(cm_mlm.card_to_mlm(card, relative_to=card.onnx_path.parent))
    assert mlm.MLMExtension.get_schema_uri() == cm_mlm.MLM_SCHEMA and cm_mlm.MLM_SCHEMA in item.stac_extensions
    ext = mlm.MLMExtension.ext(item)
    assert ext.mlm_name == "spectral-mlp" and ext.framework == "ONNX"
    (inp,) = ext.input
    assert inp.bands == list(card.bands) and inp.input.shape == [-1, card.n_bands]
    assert [v["type"] for v in inp.properties["value_scaling"]] == ["z-score"] * card.n_bands
    (out,) = ext.output
    assert [c.name for c in out.classes] == ["clear", "cloud"]
    asset = item.assets["model"]
    assert mlm.AssetGeneralMLMExtension.ext(asset).artifact_type == "onnx" and asset.href == "model.onnx"
    back = cm_mlm.card_from_mlm(item.to_dict(), base=card.onnx_path.parent)
    assert back.bands == card.bands and back.classes == card.classes


def test_readme_stackstac_and_odc_stac_recipes(masks: Path) -> None:
    stackstac = pytest.importorskip("stackstac")
    odc_stac = pytest.importorskip("odc.stac")

    def item_json(path: Path) -> dict:  # as in the README
        doc = json.loads(path.read_text())
        for asset in doc["assets"].values():
            asset["href"] = str((path.parent / asset["href"]).resolve())
        return doc

    paths = sorted((masks / "items").glob("*.json"))
    docs = [item_json(p) for p in paths]
    arr = stackstac.stack(docs, assets=["mask"], snap_bounds=False)
    first = masks / Path(docs[0]["assets"]["mask"]["href"]).name
    with rasterio.open(first) as ds:
        mask, transform = ds.read(1), ds.transform
    assert arr.shape[-2:] == mask.shape and float(arr.x[0]) == transform.c and float(arr.y[0]) == transform.f
    got = arr.sel(id=docs[0]["id"]).squeeze("band").compute().values
    assert np.array_equal(np.nan_to_num(got, nan=255).astype(np.uint8), mask)
    items = list(pystac.Catalog.from_file(str(masks / "catalog.json")).get_items(recursive=True))
    ds = odc_stac.load(items, bands=["mask"])
    assert ds["mask"].shape[-2:] == mask.shape and ds.odc.geobox.crs.epsg == 32631
