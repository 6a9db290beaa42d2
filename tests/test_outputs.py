"""Outputs other tools read: the mask COG's class table, the STAC item, collision-free names, interop.

A small 4-channel ONNX model (thick cloud, thin cloud, shadow, clear; a 1x1 convolution of blue and
NIR reflectance, so its answer is known by hand) runs end to end; class 3 (thin cloud) must show in
the mask, the COG's colour table/category names/tags, the item's classes, the quicklook legend, the
summary row and ``open_mask``'s attrs.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pystac
import pytest
import rasterio
import rasterio.shutil
import yaml
from onnx import TensorProto, helper, numpy_helper

from cloudmask.api import mask_scene, open_mask
from cloudmask.classes import NODATA, THREE_CLASSES, ClassTable
from cloudmask.layout import OutputPaths, output_stem, safe_name
from cloudmask.output_catalog import mask_item, update_output_catalog, write_item
from cloudmask.pipeline import MaskResult
from cloudmask.profiles import scene_spec
from cloudmask.quicklook import legend_labels
from cloudmask.reader import RasterSource
from cloudmask.sample import make_scene
from cloudmask.writer import CogSink

# logits of (thick, thin, shadow, clear) = W @ (blue, nir) + b: thin for 0.1 < blue < 0.5, thick above,
# shadow where blue + nir < 0.12, clear otherwise
W = np.array([[40.0, 0.0], [20.0, 0.0], [-30.0, -30.0], [0.0, 0.0]], np.float32)
B = np.array([-12.0, -2.0, 3.6, 0.0], np.float32)
CHANNEL_VALUES = np.array([1, 3, 2, 0], np.uint8)  # cloud, thin_cloud, shadow, clear


def _four_class_card(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["output"], kernel_shape=[1, 1])]
    graph = helper.make_graph(
        nodes, "four_class",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2, 128, 128])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4, 128, 128])],
        [numpy_helper.from_array(W.reshape(4, 2, 1, 1), "w"), numpy_helper.from_array(B, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, folder / "model.onnx")
    card = {"name": "four-class-test", "onnx": "model.onnx", "bands": ["blue", "nir"], "product_level": "l2a",
            "resolution": 30, "normalisation": {"type": "standardize", "mean": [0, 0], "std": [1, 1]},
            "patch_size": 128, "classes": ["thick cloud", "thin_cloud", "shadow", "clear"], "output": "logits"}
    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), "T31TDH_four", size=300, seed=3, nodata_wedge=0.2)


@pytest.fixture(scope="module")
def four_class(tmp_path_factory, scene):
    root = tmp_path_factory.mktemp("four")
    card = _four_class_card(root / "model")
    out = root / "out"
    res = mask_scene(scene, out, card, probabilities=True, quicklook=True)
    return card, out, res


def _expected(scene: pystac.Item, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    spec = scene_spec(scene)
    gb = spec.geobox(30.0)
    src = RasterSource(spec, ("blue", "nir"), gb)
    try:
        x = src.read_rows(0, gb.height)
    finally:
        src.close()
    logits = np.einsum("kc,chw->khw", W, np.nan_to_num(x)) + B[:, None, None]
    expected = CHANNEL_VALUES[np.argmax(logits, axis=0)]
    valid = np.isfinite(x).all(axis=0)
    assert expected.shape == shape
    return expected, valid


def test_four_class_model_writes_thin_cloud(four_class, scene):
    _, _, res = four_class
    with rasterio.open(res.mask) as ds:
        mask = ds.read(1)
    expected, valid = _expected(scene, mask.shape)
    assert np.array_equal(mask == NODATA, ~valid)
    agree = (mask[valid] == expected[valid]).mean()
    assert agree > 0.999, agree  # only ties on class boundaries may differ
    assert set(np.unique(mask[valid])) == {0, 1, 2, 3}
    assert res.classes.names == ("clear", "cloud", "shadow", "thin_cloud")
    assert res.counts["thin_cloud"] == int((mask == 3).sum()) > 0


def test_cog_carries_the_class_table(four_class, tmp_path):
    _, _, res = four_class
    with rasterio.open(res.mask) as ds:
        assert ds.tags()["CLOUDMASK_CLASSES"] == "0=clear,1=cloud,2=shadow,3=thin_cloud,255=nodata"
        assert ds.descriptions[0] == "cloudmask classes: 0 clear, 1 cloud, 2 shadow, 3 thin_cloud, 255 nodata"
        cmap = ds.colormap(1)
        assert cmap[3] == (51, 191, 255, 255) and cmap[NODATA][3] == 0  # thin cloud: sky blue 33BFFF (one palette)
    # GDAL itself reads the category names (the PAM sidecar): a VRT copy spells them out, in this very
    # process (cloudmask limits its no-directory-listing setting to remote files, so sidecars are found)
    vrt = tmp_path / "mask.vrt"
    rasterio.shutil.copy(res.mask, vrt, driver="VRT")
    band = ET.parse(vrt).getroot().find("VRTRasterBand")
    assert band is not None
    names = [c.text or "" for c in band.iterfind("CategoryNames/Category")]
    assert names[:4] == ["clear", "cloud", "shadow", "thin_cloud"] and names[NODATA] == "nodata"
    assert res.probabilities is not None
    with rasterio.open(res.probabilities) as ds:
        assert ds.count == 4 and ds.descriptions[3] == "probability of thin_cloud, percent"
        probs = ds.read()
    with rasterio.open(res.mask) as ds:
        mask = ds.read(1)
    valid = mask != NODATA
    assert (np.argmax(probs, axis=0)[valid] == mask[valid]).mean() > 0.99


def test_item_classes_quicklook_and_summary_show_thin_cloud(four_class):
    _, out, res = four_class
    mask = rasterio.open(res.mask).read(1)
    n_valid = int((mask != NODATA).sum())
    doc = json.loads(res.extra["item"].read_text())
    classes = {c["name"]: c for c in doc["assets"]["mask"]["classification:classes"]}
    assert classes["thin_cloud"]["value"] == 3 and classes["thin_cloud"]["count"] == int((mask == 3).sum())
    assert classes["thin_cloud"]["percentage"] == pytest.approx(100 * (mask == 3).sum() / n_valid, abs=1e-3)
    assert classes["nodata"]["percentage"] == pytest.approx(100 * (mask == NODATA).mean(), abs=1e-3)
    cloudy = ((mask == 1) | (mask == 3)).sum()
    assert doc["properties"]["eo:cloud_cover"] == pytest.approx(100 * cloudy / n_valid, abs=1e-3)
    assert doc["properties"]["proj:epsg"] == int(doc["properties"]["proj:code"].split(":")[1])
    assert not any(k.endswith("_cover") and k.startswith("cloudmask:") for k in doc["properties"])
    assert "eo:snow_cover" not in doc["properties"]  # the model has no snow class
    assert doc["assets"]["quicklook"]["roles"] == ["overview"]
    assert doc["assets"]["thumbnail"]["roles"] == ["thumbnail"]
    import matplotlib.image as mpimg

    thumb = mpimg.imread(res.extra["item"].parent / doc["assets"]["thumbnail"]["href"])
    assert max(thumb.shape[:2]) <= 256 and thumb.shape[:2] == (mask.shape[0], mask.shape[1])  # 100 px: not decimated
    # quicklook legend and the summary row
    assert res.extra["quicklook"].is_file()
    labels = [label for _, label in legend_labels(mask, res.classes)]
    assert any(label.startswith("thin cloud ") for label in labels)
    row = res.row()
    assert row["thin_cloud"] == pytest.approx(100 * (mask == 3).sum() / n_valid, abs=0.01)
    assert "snow" not in row
    # open_mask reads the table back from the COG
    da = open_mask(res.mask)
    assert da.attrs["flag_values"] == [0, 1, 2, 3] and da.attrs["flag_meanings"].split()[3] == "thin_cloud"
    # the collection describes the widest table of its items
    coll = json.loads((out / "collection.json").read_text())
    assert [c["name"] for c in coll["summaries"]["classification:classes"]][3] == "thin_cloud"
    assert coll["license"] == "CC-BY-4.0" and "mask" in coll["item_assets"]


def test_cloud_shadow_mode_collapses_to_three_classes(four_class, scene, tmp_path):
    card, _, res = four_class
    three = mask_scene(scene, tmp_path, card, quicklook=False, classes="cloud-shadow")
    assert three.classes == THREE_CLASSES
    a, b = rasterio.open(res.mask).read(1), rasterio.open(three.mask).read(1)
    assert set(np.unique(b)) <= {0, 1, 2, NODATA}
    # thin cloud becomes cloud; probabilities add, so where thin won the folded cloud wins
    assert (b[a == 3] == 1).all()
    assert ((a == b) | (a == 3) | (b == 1)).mean() > 0.999
    doc = json.loads(three.extra["item"].read_text())
    assert [c["name"] for c in doc["assets"]["mask"]["classification:classes"]] == ["clear", "cloud", "shadow", "nodata"]


# ------------------------------------------------------------------------------------------ names


def test_output_stems_never_collide():
    ids = ["dup/a", "dup_a", "dup a", "dup:a", "../dup_a", "DUP_a"]
    stems = [output_stem(i) for i in ids]
    assert len(set(stems)) == len(ids)
    assert output_stem("dup_a") == "dup_a"  # a safe id keeps its name
    assert output_stem("dup/a").startswith("dup_a-") and output_stem("dup/a") == output_stem("dup/a")
    assert all(safe_name(s) == s for s in stems)
    long = "x" * 300 + "/"
    assert len(output_stem(long)) <= 200 and output_stem(long) != output_stem(long[:-1] + ":")
    paths = OutputPaths.for_scene("/o", "dup/a")
    assert paths.item.name == f"{paths.item_id}.json" and OutputPaths.of_mask(paths.mask) == paths


def test_two_ids_that_sanitise_alike_keep_both_outputs(tmp_path, scene):
    out = tmp_path / "out"
    docs = []
    for new_id in ("dup/a", "dup_a"):
        it = scene.clone()
        it.id = new_id
        docs.append(mask_scene(it, out, "ukis-6b-l2a", backend="emulated", quicklook=False))
    a, b = docs
    assert a.mask != b.mask and a.mask.is_file() and b.mask.is_file()
    ids = {json.loads(p.read_text())["properties"]["cloudmask:source_id"] for p in (out / "items").glob("*.json")}
    assert ids == {"dup/a", "dup_a"}
    coll = json.loads((out / "collection.json").read_text())
    assert len([lk for lk in coll["links"] if lk["rel"] == "item"]) == 2


# ---------------------------------------------------------------------------------------- nodata


def test_all_nodata_scene_has_no_cloud_cover(tmp_path, scene):
    spec = scene_spec(scene)
    gb = spec.geobox(30.0)
    paths = OutputPaths.for_scene(tmp_path, spec.id)
    table = ClassTable.for_names(["clear", "cloud", "shadow"])
    with CogSink(paths.mask, gb, classes=table) as sink:
        sink.write_block(0, np.full(gb.shape, NODATA, np.uint8), None)
    from cloudmask.engine import StreamStats

    res = MaskResult(spec.id, paths.mask, None, {}, StreamStats(), "test", 0.1, classes=table)
    item = mask_item(spec, res)
    doc = json.loads(write_item(tmp_path, item).read_text())
    p = doc["properties"]
    assert "eo:cloud_cover" not in p and "no valid pixel" in p["description"]
    assert p["cloudmask:valid_pixels"] == 0
    classes = doc["assets"]["mask"]["classification:classes"]
    assert all("percentage" not in c for c in classes if c["value"] != NODATA)
    assert classes[-1]["count"] == gb.shape[0] * gb.shape[1] and classes[-1]["percentage"] == 100.0
    update_output_catalog(tmp_path)  # a collection of only such items still builds
    assert "eo:cloud_cover" not in json.loads((tmp_path / "collection.json").read_text())["summaries"]


def test_snow_class_gives_snow_cover(tmp_path, scene):
    spec = scene_spec(scene)
    gb = spec.geobox(30.0)
    paths = OutputPaths.for_scene(tmp_path, spec.id)
    table = ClassTable.for_names(["clear", "snow"])
    mask = (np.arange(gb.shape[0] * gb.shape[1]) % 6).astype(np.uint8).reshape(gb.shape)  # 0-4 and 5 ...
    mask[mask == 5] = NODATA  # ... one pixel in six nodata
    with CogSink(paths.mask, gb, classes=table) as sink:
        sink.write_block(0, mask, None)
    from cloudmask.engine import StreamStats

    shares = table.shares(table.histogram(mask))
    res = MaskResult(spec.id, paths.mask, None, shares.fractions(), StreamStats(), "test", 0.1, classes=table,
                     counts=dict(shares.counts))
    p = mask_item(spec, res).properties
    valid = (mask != NODATA).sum()
    assert p["eo:snow_cover"] == pytest.approx(100 * (mask == 4).sum() / valid, abs=1e-3)
    assert p["eo:cloud_cover"] == pytest.approx(100 * np.isin(mask, (1, 3)).sum() / valid, abs=1e-3)
    with rasterio.open(paths.mask) as ds:
        assert ds.tags()["CLOUDMASK_CLASSES"] == "0=clear,1=cloud,2=shadow,3=thin_cloud,4=snow,255=nodata"


# ------------------------------------------------------------------------------------- derived_from


def test_derived_from_is_portable(four_class, scene, tmp_path):
    _, out, res = four_class
    doc = json.loads(res.extra["item"].read_text())
    links = [lk for lk in doc["links"] if lk["rel"] == "derived_from"]
    assert len(links) == 1 and not os.path.isabs(links[0]["href"])
    assert (res.extra["item"].parent / links[0]["href"]).resolve() == Path(scene.get_self_href()).resolve()
    remote = scene.clone()
    remote.set_self_href("https://example.test/collections/s2/items/T31TDH_four")
    item = mask_item(scene_spec(remote), res)
    assert [lk.href for lk in item.links if lk.rel == "derived_from"] == [
        "https://example.test/collections/s2/items/T31TDH_four"]


# ------------------------------------------------------------------------------------------ interop


def test_stackstac_and_odc_stac_load_the_mask_on_its_grid(four_class):
    stackstac = pytest.importorskip("stackstac")
    odc_stac = pytest.importorskip("odc.stac")
    _, out, res = four_class
    doc = json.loads(res.extra["item"].read_text())
    doc["assets"] = {k: {**v, "href": str((res.extra["item"].parent / v["href"]).resolve())}
                     for k, v in doc["assets"].items()}
    with rasterio.open(res.mask) as ds:
        mask, transform, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    # stackstac with no extra arguments: it needs proj:epsg to pick the CRS and grid
    arr = stackstac.stack([doc], assets=["mask"]).squeeze(("time", "band")).compute()
    assert str(arr.attrs["crs"]).lower() == f"epsg:{epsg}"
    assert arr.shape == mask.shape
    # stackstac labels pixels by their top-left corner (its default xy_coords="topleft")
    assert float(arr.x[0]) == transform.c and float(arr.y[0]) == transform.f
    assert float(arr.x[1] - arr.x[0]) == transform.a and float(arr.y[1] - arr.y[0]) == transform.e
    assert np.array_equal(np.nan_to_num(arr.values, nan=NODATA).astype(np.uint8), mask)
    # through pystac too, when it is told not to migrate (migrating drops proj:epsg)
    kept = pystac.Item.from_dict(doc, migrate=False)
    assert kept.properties["proj:epsg"] == epsg
    assert stackstac.stack([kept], assets=["mask"]).shape[-2:] == mask.shape
    # odc-stac through pystac (which reads proj:code)
    item = pystac.Item.from_dict(doc)
    ds = odc_stac.load([item], bands=["mask"])
    got = ds["mask"].isel(time=0)
    assert got.shape == mask.shape and ds.odc.geobox.crs.epsg == epsg
    assert ds.odc.geobox.affine == transform
    assert np.array_equal(got.values, mask)


# ------------------------------------------------------------------------------------------ the CLI


def test_run_summary_shows_thin_cloud_and_cloud_shadow_folds_it(tmp_path, sample_catalog):
    from click.testing import CliRunner

    from cloudmask.cli import main

    card = _four_class_card(tmp_path / "model")
    out = tmp_path / "four"
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(out), "--model", str(card),
                                    "--no-progress", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split()
    assert header[:5] == ["scene", "status", "cloud", "shadow", "thin_cloud"] and "snow" not in header
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 3 and all(r["thin_cloud"] > 0 for r in rows)
    assert all(abs(r["clear"] + r["cloud"] + r["shadow"] + r["thin_cloud"] - 100) < 0.05 for r in rows)
    folded = tmp_path / "three"
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(folded), "--model", str(card),
                                    "--no-progress", "--no-quicklook", "--classes", "cloud-shadow"])
    assert res.exit_code == 0, res.output
    assert "thin_cloud" not in res.stdout.splitlines()[0]
    for p in (folded / "items").glob("*.json"):
        doc = json.loads(p.read_text())
        assert doc["properties"]["cloudmask:classes"] == "0=clear,1=cloud,2=shadow,255=nodata"


def test_job_spec_classes(tmp_path, sample_catalog):
    from cloudmask.errors import CloudmaskError
    from cloudmask.jobs import load_spec, run_job

    card = _four_class_card(tmp_path / "model")
    base = f'stac = "{sample_catalog}"\nmodel = "{card}"\nlimit = 1\n'
    four, three = tmp_path / "four.toml", tmp_path / "three.toml"
    four.write_text(base + f'output = "{tmp_path / "o4"}"\n')
    three.write_text(base + f'output = "{tmp_path / "o3"}"\nclasses = "cloud-shadow"\n')
    for spec_path, summary in ((four, "0=clear,1=cloud,2=shadow,3=thin_cloud,255=nodata"),
                               (three, "0=clear,1=cloud,2=shadow,255=nodata")):
        spec = load_spec(spec_path)
        report = run_job(spec)
        assert len(report.processed) == 1 and not report.failed
        (item,) = (spec.output / "items").glob("*.json")
        assert json.loads(item.read_text())["properties"]["cloudmask:classes"] == summary
        (row,) = json.loads((spec.output / "summary.json").read_text())["scenes"]
        assert ("thin_cloud" in row) == ("thin_cloud" in summary)
        assert sum(v for k, v in row.items() if k in ("clear", "cloud", "shadow", "thin_cloud")) == pytest.approx(100)
    bad = tmp_path / "bad.toml"
    bad.write_text(base + f'output = "{tmp_path / "ob"}"\nclasses = "three"\n')
    with pytest.raises(CloudmaskError, match="classes"):
        load_spec(bad)


def test_run_and_job_keep_two_ids_that_sanitise_alike(tmp_path, sample_catalog):
    import shutil

    from click.testing import CliRunner

    from cloudmask.cli import main
    from cloudmask.jobs import load_spec, run_job

    cat = tmp_path / "cat"
    shutil.copytree(sample_catalog.parent, cat)
    files = sorted(p for p in cat.rglob("*.json") if json.loads(p.read_text()).get("type") == "Feature")
    for path, new_id in zip(files[:2], ("dup/a", "dup_a"), strict=True):
        doc = json.loads(path.read_text())
        doc["id"] = new_id
        path.write_text(json.dumps(doc))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--stac", str(cat / "catalog.json"), "--out", str(out), "--backend",
                                    "emulated", "--no-progress", "--no-quicklook"])
    assert res.exit_code == 0, res.output
    job = tmp_path / "job.toml"
    job.write_text(f'stac = "{cat / "catalog.json"}"\noutput = "{tmp_path / "job"}"\nbackend = "emulated"\n')
    report = run_job(load_spec(job))
    assert len(report.processed) == 3 and not report.failed
    for folder in (out, tmp_path / "job"):
        sources = {json.loads(p.read_text())["properties"]["cloudmask:source_id"] for p in (folder / "items").glob("*.json")}
        assert {"dup/a", "dup_a"} <= sources and len(sources) == 3
        assert len(list(folder.glob("*_cloudmask.tif"))) == 3


def test_predict_attrs_name_the_classes(four_class, scene):
    import cloudmask

    card, _, _ = four_class
    ds = cloudmask.open_scene(scene)  # reflectance at 30 m (the default model's bands include blue and nir)
    da = cloudmask.predict(ds[["blue", "nir"]].to_array("band"), model=str(card))
    assert da.attrs["flag_values"] == [0, 1, 2, 3] and da.attrs["flag_meanings"].split()[-1] == "thin_cloud"
    assert 3 in np.unique(da.values)
    folded = cloudmask.predict(ds[["blue", "nir"]].to_array("band"), model=str(card), classes="cloud-shadow")
    assert folded.attrs["flag_values"] == [0, 1, 2]
    assert (folded.values[da.values == 3] == 1).all()
    arr = np.moveaxis(ds[["blue", "nir"]].to_array("band").values, 0, -1)  # numpy (H, W, bands)
    assert 3 not in np.unique(cloudmask.predict(arr, model=str(card), classes="cloud-shadow"))
