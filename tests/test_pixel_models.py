"""Non-vision models: pixel models (dense blocks, batch folding for Metis), patch classifiers, and the
blenders on their own (no threads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import rasterio
from odc.geo import geom
from onnx import TensorProto, helper, numpy_helper

import cloudmask
from cloudmask.engine import ArraySink, ArraySource, PatchBlender, PixelBlender, StreamConfig, stream_scene
from cloudmask.engine.blender import PatchClassBlender
from cloudmask.engine.messages import PatchTask, PixelRun, RowCut, StripCut
from cloudmask.engine.stats import StreamStats
from cloudmask.errors import ConfigError, ModelCardError, ModelError
from cloudmask.grid import PatchLayout, blend_weights
from cloudmask.models import NODATA, ModelCard, load_model
from cloudmask.runtime import OnnxRunner, make_runners

from .conftest import shared_dir

MLP = Path(cloudmask.__file__).parent / "data" / "models" / "spectral-mlp"
#: s2cloudless band indices (all-bands order) of the MLP's 10 bands.
MLP_BANDS = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]
JP2 = {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
       "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
       "swir22": "B12"}


class PixelwiseRunner:
    """A pixel model that says cloud where the normalised band 0 is positive; records its calls."""

    def __init__(self, shape):
        self._shape = shape
        self.calls = 0
        self.filled_calls = 0

    @property
    def input_shape(self):
        return self._shape

    def run(self, batch):
        assert batch.shape == self._shape and batch.dtype == np.float32
        self.calls += 1
        if len(self._shape) == 4 and self._shape[2:] != (1, 1):  # folded [1, C, H, W]
            out = np.zeros((1, 2, *self._shape[2:]), np.float32)
            out[:, 1] = np.where(batch[:, 0] > 0, 10.0, -10.0)
            return out
        x0 = batch.reshape(self._shape[0], -1)[:, 0]
        out = np.zeros((self._shape[0], 2), np.float32)
        out[:, 1] = np.where(x0 > 0, 10.0, -10.0)
        return out if len(self._shape) == 2 else out[:, :, None, None]

    def close(self):
        pass


def _mlp_card(name: str = "card.yaml") -> ModelCard:
    return load_model(MLP / name)


def _sixty_percent_nodata(card, h=200, w=150, seed=1):
    rng = np.random.default_rng(seed)
    refl = rng.uniform(0.0, 0.6, (card.n_bands, h, w)).astype(np.float32)
    flat = np.zeros(h * w, bool)
    flat[rng.choice(h * w, size=int(0.6 * h * w), replace=False)] = True
    refl[:, flat.reshape(h, w)] = np.nan
    refl[:, :20] = np.nan  # whole nodata strips too
    return refl


@pytest.mark.parametrize(("shape", "instances"), [((1000, 10), 1), ((1000, 10, 1, 1), 2), ((1, 10, 32, 32), 2)])
def test_pixel_model_packs_only_valid_pixels(shape, instances):
    card = _mlp_card()
    refl = _sixty_percent_nodata(card)
    valid = ~np.isnan(refl).any(axis=0)
    runners = [PixelwiseRunner(shape) for _ in range(instances)]
    sink = ArraySink(200, 150)
    stats = stream_scene(ArraySource(refl), card, runners, sink, StreamConfig(strip_rows=16))
    block = 1024 if len(shape) == 4 and shape[2:] != (1, 1) else 1000
    assert int(valid.sum()) < 0.4 * 200 * 150
    assert sum(r.calls for r in runners) == stats.calls == math.ceil(valid.sum() / block)
    assert stats.pixels == valid.sum() and stats.unit == "pixels" and stats.per_call == block
    expected = np.where(refl[0] > card.mean[0], 1, 0).astype(np.uint8)
    expected[~valid] = NODATA
    assert np.array_equal(sink.classes, expected)


def test_pixel_model_probabilities_are_scattered_with_the_classes():
    card = _mlp_card()
    refl = _sixty_percent_nodata(card, 64, 48)
    sink = ArraySink(64, 48, probabilities=True, classes=2)
    stream_scene(ArraySource(refl), card, [PixelwiseRunner((100, 10))], sink, StreamConfig(probabilities=True))
    valid = sink.classes != NODATA
    assert sink.probabilities is not None
    assert np.array_equal(sink.probabilities[1][valid] == 100, sink.classes[valid] == 1)
    assert (sink.probabilities[:, ~valid] == 0).all()


def test_pixel_runner_shape_must_fit_the_card():
    card = _mlp_card()
    with pytest.raises(cloudmask.errors.CloudmaskError, match="pixel model"):
        stream_scene(ArraySource(np.zeros((10, 4, 4), np.float32)), card, [PixelwiseRunner((8, 4))], ArraySink(4, 4))


def test_pixel_blender_scatters_blocks_in_any_order():
    card = _mlp_card()
    stats = StreamStats()
    b = PixelBlender(card, width=4, n_strips=2, probabilities=False, stats=stats)
    assert b.cut(StripCut(0, 0, 2, np.array([0, 2, 5, 7]))) == []
    assert b.cut(StripCut(1, 2, 1, np.array([1, 3]))) == []
    # block 2 (strip 0's last pixel, strip 1) arrives first: nothing is final yet
    logits = np.array([[0, 5], [5, 0], [0, 5]], np.float32)  # cloud, clear, cloud
    assert b.feed([PixelRun(0, 3, 1, 0), PixelRun(1, 0, 2, 1)], logits, 3) == []
    blocks = b.feed([PixelRun(0, 0, 3, 0)], np.array([[5, 0], [0, 5], [5, 0], [9, 9]], np.float32), 3)
    assert [blk.row for blk in blocks] == [0, 2] and b.is_done
    assert blocks[0].classes.tolist() == [[0, NODATA, 1, NODATA], [NODATA, 0, NODATA, 1]]
    assert blocks[1].classes.tolist() == [[NODATA, 0, NODATA, 1]]
    assert stats.pixels == 6


def test_patch_blender_waits_for_neighbours_without_threads():
    card = load_model("ukis-4b-l2a")
    lay = PatchLayout(40, 40, 16, 4)  # stride 8: 5 x 5 patches
    b = PatchBlender(lay, card, blend_weights(16, 4), probabilities=False, stats=StreamStats())
    valid = np.ones((8, 40), bool)
    for i in range(lay.n_rows):
        assert b.cut(RowCut(i, lay.n_cols, tuple(range(lay.n_cols)), valid)) == []
    scores = np.zeros((lay.n_cols, 3, 16, 16), np.float32)
    scores[:, 2] = 4.0  # shadow everywhere
    assert b.feed([PatchTask(0, j) for j in range(lay.n_cols)], scores) == []  # row 1 may still touch block 0
    out = b.feed([PatchTask(1, j) for j in range(lay.n_cols)], scores)
    assert [blk.row for blk in out] == [0]
    out = [blk for i in (4, 3, 2) for blk in b.feed([PatchTask(i, j) for j in range(lay.n_cols)], scores)]
    assert [blk.row for blk in out] == [8, 16, 24, 32] and b.is_done
    assert all((blk.classes == 2).all() for blk in out)


def test_patch_class_blender_one_pixel_per_patch():
    card = ModelCard(name="pc", onnx_path=MLP / "model.onnx", bands=("blue",), product_level="l1c", resolution=10,
                     mean=(0.0,), std=(1.0,), patch_size=16, classes=("clear", "cloud"), kind="patch-classifier")
    lay = PatchLayout(40, 40, 16, 0)
    b = PatchClassBlender(lay, card, probabilities=True, stats=StreamStats())
    b.cut(RowCut(0, 2, (0, 2), np.ones((16, 40), bool)))
    out = b.feed([PatchTask(0, 0), PatchTask(0, 2)], np.array([[0, 3], [3, 0]], np.float32))
    assert len(out) == 1 and out[0].classes.tolist() == [[1, NODATA, 0]]
    assert out[0].probabilities is not None and out[0].probabilities[1, 0].tolist() == [95, 0, 5]


# --------------------------------------------------------------------------------------- cards, runners

def test_card_kind_is_validated(tmp_path):
    base = _mlp_card()
    with pytest.raises(ModelCardError, match="kind must be one of"):
        base.with_onnx(base.onnx_path, kind="graph")
    raw = base.to_dict(relative_to=MLP)
    assert raw["kind"] == "pixel"
    base.with_onnx(base.onnx_path, patch_size=1)  # pixel models have no patch size


def test_onnx_runner_pins_a_dynamic_pixel_batch():
    card = _mlp_card()
    (r,) = make_runners(card, instances=1, block=4096)
    assert r.input_shape == (4096, 10)
    x = np.random.default_rng(0).normal(size=(4096, 10)).astype(np.float32)
    assert r.run(x).shape == (4096, 2)
    assert OnnxRunner(card).input_shape == (65_536, 10)


# --------------------------------------------------------------------------------------- batch folding

def _real_normalised_pixels(card: ModelCard, n: int = 65_536) -> np.ndarray:
    d = shared_dir("data", "real", "s2cloudless-l1c-arrays")
    img = np.load(d / "input_arrays.npz")["s2_im"][0][:, :, MLP_BANDS].reshape(-1, 10)[:n]
    return card.normalise(img.T.copy()).T.copy()  # (n, 10)


@pytest.mark.parametrize("card_file", ["card.yaml", "card-matmul.yaml"])
def test_folded_export_equals_the_pixel_model(tmp_path, card_file):
    import onnxruntime as ort

    from cloudmask.metis.check import check
    from cloudmask.metis.export import export

    card = _mlp_card(card_file)
    ops = {n.op_type for n in onnx.load(str(card.onnx_path)).graph.node}
    assert ops == ({"Gemm", "Relu"} if card_file == "card.yaml" else {"MatMul", "Add", "Relu"})
    res = export(card, tmp_path / "out")
    assert res.input_shape == (1, 10, 256, 256) and res.input_shape[2] * res.input_shape[3] >= 65_536
    folded = onnx.load(str(res.onnx_path))
    assert {n.op_type for n in folded.graph.node} == {"Conv", "Relu"}
    report = check(res.onnx_path)
    d = report.to_dict()
    assert report.ok and report.compilable and d["violations"] == [] and d["model_violations"] == []
    x = _real_normalised_pixels(card)
    want = ort.InferenceSession(str(card.onnx_path)).run(None, {"reflectance": x})[0]  # (N, 2)
    got = ort.InferenceSession(str(res.onnx_path)).run(None, {"reflectance": x.T.reshape(1, 10, 256, 256).copy()})[0]
    assert np.abs(got.reshape(2, -1).T - want).max() <= 1e-4
    exported = load_model(res.card_path)
    assert exported.kind == "pixel" and list(exported.extra["fold"]) == [256, 256]
    assert exported.extra["folded_from"]["kind"] == "pixel"


def test_fold_size_and_refusals(tmp_path):
    from cloudmask.metis.export import export

    res = export(_mlp_card(), tmp_path / "a", fold=(128, 512))
    assert res.input_shape == (1, 10, 128, 512)
    # every cores mode for every model kind (issue 20): a batch-4 fold is one instance over four cores
    assert export(_mlp_card(), tmp_path / "d", cores="batch4").card.extra["metis"]["aipu_cores"] == 4
    with pytest.raises(ConfigError, match="--fold is for pixel models"):
        export("ukis-4b-l2a", tmp_path / "b", fold=(8, 8))
    # an op batch folding cannot rewrite (a Sin before the layers; an identity Transpose is folded away now)
    m = onnx.load(str(MLP / "model.onnx"))
    first = m.graph.node[0]
    m.graph.node.insert(0, helper.make_node("Sin", ["reflectance"], ["t"]))
    first.input[0] = "t"
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    card = _mlp_card().with_onnx(bad)
    with pytest.raises(ModelError, match="cannot fold op Sin"):
        export(card, tmp_path / "c")


def test_metis_export_cli_fold_option(tmp_path):
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["metis", "export", "--model", str(MLP / "card-matmul.yaml"), "--out",
                                  str(tmp_path), "--fold", "64x1024"])
    assert r.exit_code == 0, r.output
    assert "[1, 10, 64, 1024]" in r.output and "0 with violations" in r.output
    r = CliRunner().invoke(main, ["metis", "export", "--model", str(MLP / "card.yaml"), "--out", str(tmp_path),
                                  "--fold", "big"])
    assert r.exit_code == 2 and "--fold must be HxW" in r.output


# --------------------------------------------------------------------------------------- end to end

def _clip_catalog(tmp_path: Path) -> Path:
    """A static STAC catalogue with the real L1C JP2 clip as one Earth Search L1C-style item."""
    d = shared_dir("data", "real", "s2-l1c-jp2-clip", "IMG_DATA")
    bbox = [399960.0, 4690200.0, 402960.0, 4693200.0]
    footprint = geom.box(*bbox, "EPSG:32631").to_crs("EPSG:4326")
    assets = {
        band: {"href": str(d / f"T31TDH_20150726T105026_{name}.jp2"), "type": "image/jp2", "roles": ["data"],
               "eo:bands": [{"name": name, "common_name": band}],
               "raster:bands": [{"scale": 0.0001, "offset": 0.0, "nodata": 0}]}
        for band, name in JP2.items()
    }
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": "S2A_31TDH_20150726_clip_L1C", "collection": "sentinel-2-l1c",
        "stac_extensions": ["https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                            "https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "geometry": footprint.json,
        "bbox": list(footprint.boundingbox),
        "properties": {"datetime": "2015-07-26T10:50:26Z", "platform": "sentinel-2a", "proj:epsg": 32631,
                       "proj:bbox": bbox, "s2:processing_baseline": "02.04", "eo:cloud_cover": 1.0},
        "links": [], "assets": assets,
    }
    root = tmp_path / "catalog"
    (root / "items").mkdir(parents=True)
    (root / "items" / "item.json").write_text(json.dumps(item))
    (root / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "clip", "description": "JP2 clip",
        "links": [{"rel": "item", "href": "./items/item.json", "type": "application/json"}]}))
    return root / "catalog.json"


def _run(catalog: Path, model: Path, out: Path, *extra: str) -> tuple[np.ndarray, np.ndarray]:
    """``cloudmask run`` on the catalogue: (mask, probabilities in percent)."""
    from click.testing import CliRunner

    from cloudmask.cli import main

    r = CliRunner().invoke(main, ["run", "--stac", str(catalog), "--model", str(model), "--out", str(out),
                                  "--no-quicklook", "--no-progress", "--probabilities", *extra])
    assert r.exit_code == 0, r.output
    (tif,) = sorted(out.glob("*_cloudmask.tif"))
    (ptif,) = sorted(out.glob("*_probabilities.tif"))
    with rasterio.open(tif) as ds, rasterio.open(ptif) as ps:
        return ds.read(1), ps.read()


def _recentred_mlp(tmp_path: Path, form: str = "matmul", shift: float = 13.7) -> Path:
    """The example MLP (``gemm`` or ``matmul`` form) with its cloud logit lowered by ``shift``.

    The example model calls nearly all of the JP2 clip cloud (cloud-minus-clear logit 6 to 23, median
    13.7: the clip has thin cirrus, B10 ~0.03); re-centring its last bias splits the clip about half and
    half, so that comparing masks compares decisions, not a constant.
    """
    m = onnx.load(str(MLP / ("model-matmul.onnx" if form == "matmul" else "model.onnx")))
    last = [n for n in m.graph.node if n.op_type in ("Add", "Gemm")][-1]
    init = {t.name: t for t in m.graph.initializer}
    t = init[last.input[1] if form == "matmul" else last.input[2]]
    b = numpy_helper.to_array(t).copy()
    b[1] -= shift
    t.CopyFrom(numpy_helper.from_array(b, t.name))
    onnx.save(m, str(tmp_path / "mlp.onnx"))
    card = _mlp_card("card-matmul.yaml" if form == "matmul" else "card.yaml").with_onnx(
        tmp_path / "mlp.onnx", name="mlp-recentred")
    return card.save(tmp_path / "mlp.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("form", ["gemm", "matmul"])
def test_jp2_clip_same_mask_original_exported_and_fake_metis(tmp_path, fake_sdk, form):
    from cloudmask.metis.export import export
    from cloudmask.pipeline import mask_scene_spec
    from cloudmask.profiles import scene_spec

    catalog = _clip_catalog(tmp_path)
    mlp = _recentred_mlp(tmp_path, form)
    original, p_original = _run(catalog, mlp, tmp_path / "o1")
    assert original.shape == (300, 300) and (original != NODATA).all()
    assert 0.2 < (original == 1).mean() < 0.8 and p_original.shape == (2, 300, 300)
    res = export(mlp, tmp_path / "exp")
    folded, p_folded = _run(catalog, res.card_path, tmp_path / "o2")
    assert np.array_equal(folded, original)
    # same probabilities (uint8 percent; a float difference of 1e-5 may round one value the other way)
    diff = np.abs(p_folded.astype(int) - p_original)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    # the exported card on the (fake) Metis device: int8 in and out, the folded graph computing
    compiled = tmp_path / "compiled.json"
    compiled.write_text(json.dumps({"batch": 1, "channels": 10, "height": 256, "width": 256, "classes": 2,
                                    "onnx": str(res.onnx_path), "in_scale": 0.04, "in_zero_point": 0,
                                    "out_scale": 0.25}))
    card = res.card.with_onnx(res.onnx_path, extra={**res.card.extra, "metis_model": str(compiled)})
    spec = scene_spec(json.loads((catalog.parent / "items" / "item.json").read_text()))
    from cloudmask.runtime.metis import make_metis_runners

    runners = make_metis_runners(card, instances=1)
    mres = mask_scene_spec(spec, tmp_path / "o3", card, runners=runners, stream=StreamConfig(probabilities=True))
    assert mres.probabilities is not None
    with rasterio.open(mres.mask) as ds, rasterio.open(mres.probabilities) as ps:
        metis, p_metis = ds.read(1), ps.read()
    assert mres.stats.calls == math.ceil(300 * 300 / 65_536) + 2  # two drain calls of the double buffer
    assert runners[0]._conn.instances[0].calls == mres.stats.calls
    # int8 in and out (scales 0.04 / 0.25) against float, with the decision boundary mid-distribution:
    # 98.5 % of the pixels agree, probabilities within 1.7 percentage points on average
    assert (metis != NODATA).all() and (metis == original).mean() >= 0.98
    assert np.abs(p_metis.astype(int) - p_original).mean() < 2.0  # int8 in and out: within a few percent
    for r in runners:
        r.close()  # releases its connection's core (axruntime-py.md: reserved until released)
    # the same through `cloudmask run --backend metis` (4 instances, round-robin): the same mask
    cli_mask, _ = _run(catalog, card.save(tmp_path / "exp" / "card-metis.yaml"), tmp_path / "o4", "--backend", "metis")
    assert np.array_equal(cli_mask, metis)


def _patch_classifier(tmp_path: Path, patch: int = 32, blue_mean: float = 0.1) -> ModelCard:
    """[B, 4, P, P] -> [B, 2]: mean over the patch, cloud logit = 10 x mean normalised blue."""
    w = np.zeros((4, 2), np.float32)
    w[0, 1] = 10.0
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("Gemm", ["m", "W", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "patch-classifier",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, patch, patch])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 2])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(2, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "pc.onnx"
    onnx.save(model, str(path))
    return ModelCard(name="patch-cloudy", onnx_path=path, bands=("blue", "green", "red", "nir"), product_level="l1c",
                     resolution=30.0, mean=(blue_mean, 0.1, 0.1, 0.1), std=(0.05,) * 4, patch_size=patch,
                     classes=("clear", "cloud"), kind="patch-classifier")


def test_patch_classifier_in_memory(tmp_path):
    from cloudmask.inference import predict_array

    card = _patch_classifier(tmp_path)
    rng = np.random.default_rng(0)
    refl = rng.uniform(0.0, 0.15, (4, 70, 100)).astype(np.float32)
    refl[0, :32, :32] = 0.3  # a bright (cloudy) patch
    refl[:, 32:64, 64:96] = np.nan  # a patch without data
    classes, _, stats = predict_array(refl, card)
    assert classes.shape == (3, 4)  # ceil(70/32) x ceil(100/32)
    assert classes[0, 0] == 1 and classes[1, 2] == NODATA
    expected = np.nanmean(refl[0, 32:64, :32]) > 0.1
    assert classes[1, 0] == int(expected)
    assert stats.patches == 11 and stats.skipped == 1 and stats.unit == "patches"


@pytest.mark.slow
def test_patch_classifier_writes_a_patch_resolution_cog_and_item(tmp_path):
    from cloudmask.api import mask_scene

    catalog = _clip_catalog(tmp_path)
    card = _patch_classifier(tmp_path, blue_mean=0.127)  # about the clip's median blue: a mix of classes
    res = mask_scene(catalog.parent / "items" / "item.json", tmp_path / "out", card, quicklook=False)
    with rasterio.open(res.mask) as ds:
        assert (ds.height, ds.width) == (4, 4)  # 100 px at 30 m in patches of 32
        assert ds.transform.a == 30.0 * 32 and (ds.transform.c, ds.transform.f) == (399960.0, 4693200.0)
        mask = ds.read(1)
    assert set(np.unique(mask)) == {0, 1}
    doc = json.loads(Path(res.extra["item"]).read_text())
    assert doc["properties"]["proj:shape"] == [4, 4]
    share = 100.0 * (mask == 1).mean()
    assert res.fractions["cloud"] == pytest.approx(share)


@pytest.mark.slow
def test_spatial_batching_export_compiles_a_larger_patch(tmp_path):
    from cloudmask.metis.export import export

    res = export("ukis-4b-l2a", tmp_path, patches_per_call=4)
    assert res.input_shape == (1, 4, 512, 512) and res.card.patch_size == 512
    assert res.card.extra["metis"]["patches_per_call"] == 4
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.onnx_path))
    out = sess.run(None, {sess.get_inputs()[0].name: np.zeros((1, 4, 512, 512), np.float32)})[0]
    assert out.shape == (1, 3, 512, 512)
    with pytest.raises(ConfigError, match="square"):
        export("ukis-4b-l2a", tmp_path / "x", patches_per_call=3)


def test_patch_classifier_refuses_an_xarray_grid(tmp_path):
    import xarray as xr

    from cloudmask.inference import predict

    card = _patch_classifier(tmp_path)
    da = xr.DataArray(np.full((4, 64, 64), 0.1, np.float32), dims=("band", "y", "x"),
                      coords={"band": list(card.bands)})
    with pytest.raises(ConfigError, match="patch classifier"):
        predict(da, card)


def test_patch_class_blender_takes_scores_before_the_row_cut():
    card = ModelCard(name="pc", onnx_path=MLP / "model.onnx", bands=("blue",), product_level="l1c", resolution=10,
                     mean=(0.0,), std=(1.0,), patch_size=16, classes=("clear", "cloud"), kind="patch-classifier")
    lay = PatchLayout(40, 40, 16, 0)
    b = PatchClassBlender(lay, card, probabilities=False, stats=StreamStats())
    assert b.feed([PatchTask(0, 0)], np.array([[0, 3]], np.float32)) == []  # no cut yet: not final
    assert b.cut(RowCut(0, 2, (0, 2), np.ones((16, 40), bool))) == []  # one of two patches in
    out = b.feed([PatchTask(0, 2)], np.array([[3, 0]], np.float32))
    assert len(out) == 1 and out[0].classes.tolist() == [[1, NODATA, 0]]
    assert b.cut(RowCut(1, 0, (), np.zeros((16, 40), bool)))[0].classes.tolist() == [[NODATA] * 3]
