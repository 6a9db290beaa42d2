"""Post-processing after argmax: thresholds, s2cloudless averaging/dilation, regions, buffers, SCL merge;
streamed in row blocks with bounded context it equals the whole-array computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloudmask.classes import NODATA
from cloudmask.engine import ArraySink
from cloudmask.errors import ConfigError
from cloudmask.postprocess import PostProcess, PostProcessSink, disk, for_card, parse_thresholds


def two_class(p_cloud: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Argmax classes and uint8-percent probabilities of a clear/cloud model."""
    pct = np.rint(100 * np.stack([1 - p_cloud, p_cloud])).astype(np.uint8)
    return np.argmax(pct, axis=0).astype(np.uint8), pct


def stream(options: PostProcess, classes, probs=None, scl=None, block=7, min_rows=5):
    h, w = classes.shape
    n = 0 if probs is None else probs.shape[0]
    sink = ArraySink(h, w, probabilities=probs is not None, classes=max(n, 1))
    provider = None if scl is None else (lambda a, b: scl[a:b])
    ps = PostProcessSink(sink, options, h, w, provider=provider, min_rows=min_rows)
    for r in range(0, h, block):
        ps.write_block(r, classes[r : r + block], None if probs is None else probs[:, r : r + block])
    return sink


def test_threshold_by_hand():
    p = np.array([[0.30, 0.41, 0.45, 0.60, 0.39]], np.float32)
    cls, pct = two_class(p)
    assert cls.tolist() == [[0, 0, 0, 1, 0]]  # argmax is > 0.5
    out = PostProcess(thresholds={"cloud": 0.4}).apply(cls, pct)
    assert out.tolist() == [[0, 1, 1, 1, 0]]
    # a high threshold demotes argmax cloud to the best other class
    assert PostProcess(thresholds={"cloud": 0.7}).apply(cls, pct).tolist() == [[0, 0, 0, 0, 0]]


def test_threshold_three_classes_first_listed_wins_and_nodata_kept():
    probs = np.array([[[0.2, 0.1, 0.5]], [[0.35, 0.2, 0.1]], [[0.45, 0.7, 0.4]]], np.float32)  # clear, cloud, shadow
    cls = np.array([[2, 2, NODATA]], np.uint8)
    out = PostProcess(thresholds={"cloud": 0.3, "shadow": 0.3}).apply(cls, probs)
    assert out.tolist() == [[1, 2, NODATA]]
    out = PostProcess(thresholds={"shadow": 0.3, "cloud": 0.3}).apply(cls, probs)
    assert out.tolist() == [[2, 2, NODATA]]


def test_min_region_removes_small_regions_only():
    cls = np.zeros((10, 10), np.uint8)
    cls[1:3, 1:3] = 1  # 4 px cloud
    cls[5:9, 5:9] = 1  # 16 px cloud
    cls[0, 9] = 2  # 1 px shadow
    cls[9, 0] = NODATA
    out = PostProcess(min_region=5).apply(cls)
    assert out[1:3, 1:3].sum() == 0 and (out[5:9, 5:9] == 1).all() and out[0, 9] == 0 and out[9, 0] == NODATA
    # diagonal neighbours connect (8-connectivity): a 5-pixel diagonal line is kept
    diag = np.zeros((6, 6), np.uint8)
    diag[np.arange(5), np.arange(5)] = 1
    assert (PostProcess(min_region=5).apply(diag) == diag).all()


def test_buffer_in_metres_is_a_disk_and_only_turns_clear():
    cls = np.zeros((9, 9), np.uint8)
    cls[4, 4] = 1
    cls[4, 6] = 2  # shadow next to the cloud stays shadow
    cls[0, 4] = NODATA
    out = PostProcess(buffer_m={"cloud": 20}, resolution=10).apply(cls)  # 2 px radius
    grown = out == 1
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = disk(2).astype(bool)
    expected[4, 6] = False
    assert (grown == expected).all() and out[4, 6] == 2 and out[0, 4] == NODATA
    assert disk(2).sum() == 13
    with pytest.raises(ConfigError, match="resolution"):
        PostProcess(buffer_m=30).apply(cls)


def test_scl_fill_and_veto():
    cls = np.array([[0, 0, 0, 0, 1, 1, 2]], np.uint8)
    scl = np.array([[9, 10, 3, 11, 4, 11, 6]], np.uint8)
    fill = PostProcess(scl="fill").apply(cls, provider=scl)
    assert fill.tolist() == [[1, 1, 2, 0, 1, 1, 2]]  # three-class mask: cirrus -> cloud, no snow class
    veto = PostProcess(scl="veto").apply(cls, provider=scl)
    assert veto.tolist() == [[0, 0, 0, 0, 0, 0, 0]]
    five = PostProcess(scl="fill").apply(cls, np.zeros((5, 1, 7), np.float32), scl)
    assert five.tolist() == [[1, 3, 2, 4, 1, 1, 2]]  # a five-class mask gets thin cloud and snow


@pytest.mark.parametrize("block", [1, 7, 64])
@pytest.mark.parametrize(
    "options",
    [
        PostProcess(thresholds={"cloud": 0.4}, average_over=4, dilation_size=2),
        PostProcess(min_region=12),
        PostProcess(thresholds={"cloud": 0.35}, min_region=6, buffer_m={"cloud": 30, "shadow": 20}, resolution=10),
    ],
)
def test_streamed_equals_whole(options, block):
    rng = np.random.default_rng(3)
    from scipy import ndimage

    p = ndimage.gaussian_filter(rng.random((90, 40)), 2.0)
    p = (p - p.min()) / (p.max() - p.min())
    cls, pct = two_class(p.astype(np.float32))
    cls[rng.random(cls.shape) < 0.08] = 2  # speckle of "shadow" regions (small regions to remove)
    cls[:5, :7] = NODATA
    pct[:, :5, :7] = 0
    probs = np.concatenate([pct, np.zeros((1, *cls.shape), np.uint8)])
    whole = options.apply(cls, probs)
    sink = stream(options, cls, probs, block=block)
    assert np.array_equal(sink.classes, whole)
    assert sink.probabilities is not None and (sink.probabilities[:, sink.classes == NODATA] == 0).all()


def test_streamed_scl_merge_equals_whole():
    rng = np.random.default_rng(1)
    cls = rng.integers(0, 3, (40, 30)).astype(np.uint8)
    scl = rng.integers(0, 12, (40, 30)).astype(np.uint8)
    opt = PostProcess(scl="veto", min_region=3)
    assert np.array_equal(stream(opt, cls, scl=scl, block=3).classes, opt.apply(cls, provider=scl))


def test_memory_is_bounded_by_the_halo():
    opt = PostProcess(min_region=10)
    h, w = 2000, 8
    sink = ArraySink(h, w)
    ps = PostProcessSink(sink, opt, h, w, min_rows=16)
    most = 0
    for r in range(0, h, 4):
        ps.write_block(r, np.zeros((4, w), np.uint8), None)
        most = max(most, ps.cls.shape[0])
    assert most <= 2 * opt.halo + 16 + 4 and (sink.classes == 0).all()


def test_matches_s2cloudless_get_mask_from_prob():
    s2c = pytest.importorskip("s2cloudless")
    rng = np.random.default_rng(0)
    from scipy import ndimage

    p = ndimage.gaussian_filter(rng.random((120, 80)), 3.0).astype(np.float32)
    p = (p - p.min()) / (p.max() - p.min())
    det = s2c.S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2)
    ref = det.get_mask_from_prob(p[None])[0]
    cls, _ = two_class(p)
    out = PostProcess(thresholds={"cloud": 0.4}, average_over=4, dilation_size=2).apply(cls, np.stack([1 - p, p]))
    assert np.array_equal(out, ref)


def test_options_from_card_defaults_and_overrides():
    class Card:
        extra = {"postprocess": {"thresholds": {"cloud": 0.4}}}
        resolution = 10.0
        kind = "pixel"
        patch_size = 256

    post = for_card(Card(), {"buffer": 50, "min_region": 3}, threshold=0.6)
    assert post.thresholds == {"cloud": 0.6} and post.buffer_m == {"cloud": 50.0, "shadow": 50.0}
    assert post.buffer_px() == {1: 5.0, 2: 5.0} and post.halo == 3 + 5
    assert post.as_dict() == {"thresholds": {"cloud": 0.6}, "min_region": 3, "buffer_m": {"cloud": 50.0, "shadow": 50.0}}
    assert parse_thresholds(["cloud=0.4", "Cloud shadow=0.5"]) == {"cloud": 0.4, "shadow": 0.5}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresholds": {"fog": 0.4}}, "unknown class 'fog'"),
        ({"thresholds": {"cloud": 40}}, r"probability in \[0, 1\]"),
        ({"average_over": 2}, "set a threshold too"),
        ({"scl": "replace"}, "fill, veto"),
        ({"buffer_m": {"snow": 10}}, "'cloud' and/or 'shadow'"),
    ],
)
def test_bad_options_name_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PostProcess(**kwargs)
    with pytest.raises(ConfigError, match="unknown post-processing option"):
        PostProcess.from_options({"blur": 2})


@pytest.mark.slow
def test_pipeline_postprocess_equals_whole_array_and_is_recorded(sample_items, tmp_path):
    """A scene through the pipeline with every option (SCL from the item) equals the whole-array result."""
    import json

    import rasterio

    from cloudmask.api import mask_scene, scene_of
    from cloudmask.postprocess import SclRows

    spec = scene_of(sample_items[1])  # has a nodata wedge and an SCL asset
    options = {"threshold": 0.4, "min_region": 20, "buffer": 60, "scl": "fill"}
    raw = mask_scene(spec, tmp_path / "raw", probabilities=True, quicklook=False)
    post = mask_scene(spec, tmp_path / "post", probabilities=True, quicklook=False, postprocess=options)
    with rasterio.open(raw.mask) as m, rasterio.open(raw.probabilities) as p:
        classes, probs = m.read(1), p.read()
        # the valid output: the probability COG is nodata (255) exactly where the mask is
        assert p.nodata == NODATA and np.array_equal(p.dataset_mask() == 0, classes == NODATA)
        assert (probs[:, classes == NODATA] == NODATA).all() and (probs[:, classes != NODATA] <= 100).all()
    probs[probs == NODATA] = 0
    with rasterio.open(post.mask) as m, rasterio.open(post.probabilities) as p:
        got, got_probs = m.read(1), p.read()
        from odc.geo.geobox import GeoBox

        box = GeoBox((m.height, m.width), m.transform, m.crs)
    with SclRows(spec.bands["scl"].href, box) as scl:
        expected = PostProcess.from_options(options, resolution=30.0).apply(classes, probs, scl(0, box.height))
    assert np.array_equal(got, expected) and not np.array_equal(got, classes)
    assert (got == NODATA).any() and (got_probs[:, got == NODATA] == NODATA).all()
    item = json.loads(post.extra["item"].read_text())
    assert item["properties"]["cloudmask:postprocess"] == {
        "thresholds": {"cloud": 0.4}, "min_region": 20, "buffer_m": {"cloud": 60.0, "shadow": 60.0}, "scl": "fill"}
    assert "post-processing" in item["properties"]["processing:lineage"]


def test_job_spec_carries_postprocess(tmp_path):
    from cloudmask.jobs.spec import spec_from_dict
    from cloudmask.jobs.task import TaskSettings

    (tmp_path / "catalog.json").write_text('{"type": "Catalog", "id": "c", "description": "d", "links": []}')
    spec = spec_from_dict({"stac": "catalog.json", "output": "out", "postprocess": {"threshold": 0.4, "buffer": 30}},
                          base=tmp_path)
    assert spec.postprocess == {"threshold": 0.4, "buffer": 30}
    assert TaskSettings.from_spec(spec).options.postprocess == {"threshold": 0.4, "buffer": 30}
    with pytest.raises(ConfigError, match="postprocess: unknown post-processing option"):
        spec_from_dict({"stac": "catalog.json", "output": "out", "postprocess": {"blur": 1}}, base=tmp_path)


@pytest.mark.slow
def test_cli_run_options_reach_the_item(sample_catalog, tmp_path):
    import json

    from click.testing import CliRunner

    from cloudmask.cli import main

    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--limit", "1", "--out", str(out),
                                    "--no-quicklook", "--no-progress", "--threshold", "0.45",
                                    "--class-threshold", "shadow=0.5", "--min-region", "4", "--buffer", "30"])
    assert res.exit_code == 0, res.output
    item = json.loads(next((out / "items").glob("*.json")).read_text())
    assert item["properties"]["cloudmask:postprocess"] == {
        "thresholds": {"shadow": 0.5, "cloud": 0.45}, "min_region": 4, "buffer_m": {"cloud": 30.0, "shadow": 30.0}}
    bad = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(out), "--average-over", "2"])
    assert bad.exit_code == 2 and "set a threshold too" in bad.output


def test_predict_merges_an_scl_array_like_the_whole_array_rule():
    import cloudmask

    rng = np.random.default_rng(5)
    refl = rng.uniform(0.02, 0.6, (48, 40, 4)).astype(np.float32)
    scl = rng.choice([3, 4, 8, 9, 10, 11], size=(48, 40)).astype(np.uint8)
    raw = cloudmask.predict(refl, model="ukis-4b-l2a")
    merged = cloudmask.predict(refl, model="ukis-4b-l2a", postprocess={"scl": "fill"}, scl=scl)
    assert np.array_equal(merged, PostProcess(scl="fill").apply(raw, provider=scl))
    with pytest.raises(ConfigError, match="needs scl="):
        cloudmask.predict(refl, model="ukis-4b-l2a", postprocess={"scl": "veto"})


def test_scl_is_read_with_the_scenes_gdal_options(sample_items, tmp_path, monkeypatch):
    """The SCL asset is opened and read with the provider profile's GDAL options (e.g. CDSE's S3 endpoint)."""
    from dataclasses import replace

    import rasterio

    from cloudmask import postprocess
    from cloudmask.api import mask_scene, scene_of

    spec = scene_of(sample_items[1])
    spec = replace(spec, gdal_env={**spec.gdal_env, "CLOUDMASK_TEST_ENDPOINT": "eodata.example"})
    seen: list[str | None] = []
    real_open = rasterio.open
    scl = Path(spec.bands["scl"].href).name

    def spy(path, *a, **k):
        if Path(str(path)).name == scl:
            seen.append(rasterio.env.getenv().get("CLOUDMASK_TEST_ENDPOINT") if rasterio.env.hasenv() else None)
        return real_open(path, *a, **k)

    monkeypatch.setattr(postprocess.rasterio, "open", spy)
    mask_scene(spec, tmp_path, quicklook=False, postprocess={"scl": "fill"})
    assert seen == ["eodata.example"]
