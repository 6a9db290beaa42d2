"""cloudmask.evaluate and `cloudmask evaluate`: metrics, grids, nodata, boundary band, many pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from cloudmask.cli import main
from cloudmask.errors import ConfigError, GridError
from cloudmask.evaluate import evaluate, evaluate_many, parse_classes, score_arrays, summary_rows
from cloudmask.sample import demo_catalog

try:  # tests/ is a package (tests/__init__.py) ...
    from .conftest import shared_dir
except ImportError:  # ... or plain rootdir-relative test modules
    from conftest import shared_dir  # type: ignore[no-redef]

ORIGIN = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)


def _write(path: Path, data: np.ndarray, transform: Affine | None = ORIGIN, crs: str | None = "EPSG:32633",
           nodata: float | None = None) -> Path:
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
                   nodata=nodata)
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def _iou(pred: np.ndarray, ref: np.ndarray, k: int) -> float:
    """Independent IoU: |pred==k & ref==k| / |pred==k | ref==k|."""
    return float(((pred == k) & (ref == k)).sum() / ((pred == k) | (ref == k)).sum())


def test_parse_classes() -> None:
    assert parse_classes("0=clear, 1=cloud,4=Thick cloud,5=cirrus") == {0: "clear", 1: "cloud", 4: "cloud",
                                                                         5: "thin_cloud"}
    assert parse_classes(None)[2] == "shadow"
    for bad in ("0:clear", "x=cloud", "0=fog", "", "70000=cloud"):
        with pytest.raises(ConfigError):
            parse_classes(bad)


def test_hand_computed_metrics() -> None:
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 0], [2, 0, 0, 255]], np.uint8)
    s = score_arrays(pred, ref, reference_classes="0=clear,1=cloud,2=shadow")
    # pred 255 is nodata: 11 pixels scored
    assert s.pixels == 11 and s.excluded_nodata == 1
    assert s.confusion.tolist() == [[4, 1, 0], [1, 3, 0], [1, 0, 1]]
    pc = s.per_class()
    assert pc["cloud"]["iou"] == pytest.approx(3 / 5)
    assert pc["cloud"]["precision"] == pytest.approx(3 / 4)
    assert pc["cloud"]["recall"] == pytest.approx(3 / 4)
    assert pc["clear"]["f1"] == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    assert pc["shadow"]["recall"] == pytest.approx(1 / 2) and pc["shadow"]["precision"] == 1.0
    assert s.overall_accuracy == pytest.approx(8 / 11)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["confusion_matrix"]["counts"] == s.confusion.tolist()


def test_two_class_reference_folds_shadow_and_thin_cloud_and_skips_unlabelled() -> None:
    ref = np.array([[0, 1, 1, 9]], np.uint8)  # 9 is not named: unlabelled
    pred = np.array([[2, 3, 2, 1]], np.uint8)  # shadow -> clear, thin_cloud -> cloud
    s = score_arrays(pred, ref, reference_classes="0=clear,1=cloud")
    assert s.classes == ("clear", "cloud")
    assert s.confusion.tolist() == [[1, 0], [1, 1]]
    assert s.excluded_unlabelled == 1
    # a class absent from both rasters has undefined metrics, not 0
    s2 = score_arrays(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), reference_classes="0=clear,1=cloud")
    assert s2.per_class()["cloud"]["iou"] is None and s2.overall_accuracy == 1.0


def test_a_class_absent_from_the_reference_is_not_scored() -> None:
    """A cloud/not-cloud raster under the default 0=clear,1=cloud,2=shadow mapping: shadow is not scored
    (no IoU of 0 for a class nobody labelled) and predicted shadow counts as clear, as with 0=clear,1=cloud."""
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    pred = np.array([[2, 0, 1, 2], [0, 2, 1, 1]], np.uint8)
    s = score_arrays(pred, ref)
    assert s.classes == ("clear", "cloud") and s.not_in_reference == ("shadow",)
    two = score_arrays(pred, ref, reference_classes="0=clear,1=cloud")
    assert np.array_equal(s.confusion, two.confusion) and s.overall_accuracy == pytest.approx(7 / 8)
    assert "shadow" not in s.per_class()
    d = s.to_dict()
    assert d["not_in_reference"] == ["shadow"] and "not scored" in d["note"]
    assert "not in the reference: shadow" in s.table()
    # clear and cloud are always scored; a class the reference has stays scored
    clear_only = score_arrays(np.array([[1, 0]], np.uint8), np.array([[0, 0]], np.uint8))
    assert clear_only.classes == ("clear", "cloud") and clear_only.per_class()["cloud"]["iou"] == 0.0
    assert score_arrays(pred, ref + (ref == 1)).not_in_reference == ()  # 0 and 2: cloud kept, shadow scored


def test_many_pairs_drop_a_class_only_when_every_reference_lacks_it(tmp_path: Path) -> None:
    masks, refs = tmp_path / "masks", tmp_path / "refs"
    masks.mkdir()
    refs.mkdir()
    pred = np.array([[2, 0, 1, 2], [0, 2, 1, 1]], np.uint8)
    _write(masks / "a_cloudmask.tif", pred, nodata=255)
    _write(masks / "b_cloudmask.tif", pred, nodata=255)
    _write(refs / "a.tif", np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8))
    _write(refs / "b.tif", np.array([[2, 0, 1, 1], [0, 0, 1, 1]], np.uint8))  # b has shadow
    a, b = evaluate_many(masks, refs)
    assert a.classes == b.classes == ("clear", "cloud", "shadow") and a.not_in_reference == ()
    assert a.per_class()["shadow"]["iou"] == 0.0  # a's reference has none, b's does: scored in both
    (refs / "b.tif").unlink()
    _write(refs / "b.tif", np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8))
    res = CliRunner().invoke(main, ["evaluate", str(masks), str(refs)])
    assert res.exit_code == 0, res.output
    header = res.output.splitlines()[0].split()
    assert "shadow" not in header and "not in the reference: shadow" in res.output
    assert all(float(ln.split()[1]) == 87.5 for ln in res.output.splitlines()[2:6])  # accuracy: a, b, mean, pooled


def test_boundary_band_excludes_pixels_near_reference_edges() -> None:
    ref = np.zeros((10, 10), np.uint8)
    ref[:, 5:] = 1  # one vertical edge between columns 4 and 5
    pred = np.ones_like(ref)
    s = score_arrays(pred, ref, reference_classes="0=clear,1=cloud", boundary=2)
    # columns 3..6 lie within 2 px of the other class
    assert s.excluded_boundary == 40 and s.pixels == 60
    assert s.confusion.tolist() == [[0, 30], [0, 30]]
    with pytest.raises(ConfigError):
        score_arrays(pred, ref, boundary=-1)


def test_coarse_prediction_is_resampled_nearest_onto_the_reference_grid(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 3, (20, 20)).astype(np.uint8)
    coarse[0, 0] = 255  # nodata
    pred = _write(tmp_path / "p.tif", coarse, ORIGIN @ Affine.scale(3), nodata=255)
    ref_arr = rng.integers(0, 3, (60, 60)).astype(np.uint8)
    ref_arr[-1, -1] = 7  # reference nodata
    ref = _write(tmp_path / "r.tif", ref_arr, nodata=7)
    s = evaluate(pred, ref)
    fine = np.repeat(np.repeat(coarse, 3, 0), 3, 1)
    valid = (fine != 255) & (ref_arr != 7)
    assert s.pixels == valid.sum() and s.excluded_nodata == 60 * 60 - valid.sum()
    assert s.overall_accuracy == pytest.approx((fine == ref_arr)[valid].mean())
    for k, name in enumerate(("clear", "cloud", "shadow")):
        assert s.per_class()[name]["iou"] == pytest.approx(_iou(fine[valid], ref_arr[valid], k))
    # a reference larger than the prediction: the uncovered part counts as nodata
    big = _write(tmp_path / "big.tif", np.zeros((90, 90), np.uint8))
    assert evaluate(pred, big).pixels == 60 * 60 - 9


def test_ungeoreferenced_rasters(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.tif", np.zeros((8, 8), np.uint8), transform=None)
    b = _write(tmp_path / "b.tif", np.zeros((8, 9), np.uint8), transform=None)
    assert evaluate(a, a).overall_accuracy == 1.0
    with pytest.raises(GridError, match="georeference"):
        evaluate(a, b)
    res = CliRunner().invoke(main, ["evaluate", str(a), str(b)])
    assert res.exit_code == GridError.exit_code and "georeference" in res.output


@pytest.fixture(scope="module")
def demo_masks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo chips masked with the 4-band L2A model at its 30 m (the shipped catalogue, no ../shared)."""
    out = tmp_path_factory.mktemp("masks")
    res = CliRunner().invoke(main, ["run", "--stac", str(demo_catalog()), "--out", str(out),
                                    "--model", "ukis-4b-l2a", "--no-quicklook", "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_real_chips_iou_equals_an_independent_computation(demo_masks: Path) -> None:
    """30 m masks vs the chips' 10 m ensemble prediction: evaluate's IoU == numpy on a 3x repeat."""
    cat = demo_catalog().parent / "sentinel-2-l2a"
    for chip_dir in sorted(cat.glob("ONCLOUDN_*")):
        mask = demo_masks / f"{chip_dir.name}_cloudmask.tif"
        ens = chip_dir / "ensemble.tif"
        s = evaluate(mask, ens, reference_classes="0=clear,1=cloud")
        with rasterio.open(mask) as m, rasterio.open(ens) as e:
            assert m.res == (30.0, 30.0) and e.res == (10.0, 10.0)
            assert (m.bounds.left, m.bounds.top) == (e.bounds.left, e.bounds.top)
            fine = np.repeat(np.repeat(m.read(1), 3, 0), 3, 1)[: e.height, : e.width]
            ref = e.read(1)
        pred_cloud = (fine == 1).astype(np.uint8)  # cloud vs not (shadow counts as not cloud)
        assert s.pixels == ref.size
        assert s.per_class()["cloud"]["iou"] == pytest.approx(_iou(pred_cloud, ref, 1), abs=0.01)
        assert s.overall_accuracy == pytest.approx((pred_cloud == ref).mean(), abs=1e-9)


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_ukis_patch_human_labels(tmp_path: Path) -> None:
    """The real ukis patch (human cloud + shadow labels) scored through files and the CLI's --json."""
    from cloudmask.inference import predict

    d = np.load(shared_dir("data", "real", "ukis-csmask-patch", "sentinel2.npz"))
    img, msk = d["img"], d["msk"][..., 0]
    pred = np.asarray(predict(img, model="ukis-6b-l1c")).astype(np.uint8)
    p = _write(tmp_path / "pred.tif", pred, nodata=255)
    r = _write(tmp_path / "labels.tif", msk)
    res = CliRunner().invoke(main, ["evaluate", str(p), str(r), "--reference-classes",
                                    "0=shadow,1=clear,2=clear,3=clear,4=cloud", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    truth = np.select([msk == 4, msk == 0], [1, 2], 0)
    for k, name in ((1, "cloud"), (2, "shadow")):
        assert doc["per_class"][name]["iou"] == pytest.approx(_iou(pred, truth, k), abs=0.01)
    assert doc["per_class"]["cloud"]["iou"] > 0.6 and doc["per_class"]["shadow"]["iou"] > 0.5
    assert doc["pixels"] == 512 * 512


def test_many_pairs_from_the_catalogue_and_a_directory(demo_masks: Path, tmp_path: Path) -> None:
    results = evaluate_many(demo_masks, demo_catalog(), reference_classes="0=clear,1=cloud")
    assert len(results) == 5
    rows = summary_rows(results)
    assert [r["name"] for r in rows[-2:]] == ["mean", "pooled"]
    assert rows[-2]["accuracy"] == pytest.approx(np.mean([100 * s.overall_accuracy for s in results]), abs=0.01)
    assert rows[-1]["pixels"] == sum(s.pixels for s in results)
    # every chip agrees with the ensemble (cloud vs not) on >= 75 % of its pixels
    assert all(r["accuracy"] >= 75 for r in rows)
    res = CliRunner().invoke(main, ["evaluate", str(demo_masks), str(demo_catalog().parent),
                                    "--reference-classes", "0=clear,1=cloud", "--boundary", "1"])
    assert res.exit_code == 0, res.output
    assert "pooled" in res.output and "ONCLOUDN_akny_20200910_L2A" in res.output
    # directory mode: X_cloudmask.tif pairs with X.tif
    refs = tmp_path / "refs"
    refs.mkdir()
    one = results[0].name
    (refs / f"{one}.tif").write_bytes(Path(results[0].extra["reference"]).read_bytes())
    again = evaluate_many(demo_masks, refs, reference_classes="0=clear,1=cloud")
    assert [s.name for s in again] == [one]
    assert np.array_equal(again[0].confusion, results[0].confusion)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="pairs"):
        evaluate_many(tmp_path / "empty", demo_catalog())


@pytest.mark.slow
def test_readme_accuracy_table_is_reproduced(tmp_path: Path) -> None:
    """benchmarks/accuracy.py (fp32 rows of two models) gives exactly the README's accuracy table lines."""
    import importlib.util
    import sys

    try:
        from .conftest import REPO_ROOT
    except ImportError:
        from conftest import REPO_ROOT  # type: ignore[no-redef]

    shared = shared_dir("data", "real").parents[1]
    spec = importlib.util.spec_from_file_location("bench_accuracy", REPO_ROOT / "benchmarks" / "accuracy.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = mod
    spec.loader.exec_module(mod)
    rows = mod.run(shared, tmp_path, ["ukis-6b-l1c", "ukis-4b-l2a", "s2cloudless"], int8=False)
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    readme = {tuple(c[:4]): c for c in map(cells, (REPO_ROOT / "README.md").read_text().splitlines())
              if len(c) == 9}
    lines = [cells(ln) for ln in mod.markdown(rows).splitlines()[2:]]
    assert len(lines) == 9
    for got in lines:
        want = readme.get(tuple(got[:4]))
        assert want is not None, f"README lacks the row {got[:4]}"
        assert want[8] == got[8]  # note
        for a, b in zip(want[4:8], got[4:8], strict=True):  # metrics: within 1 point (code evolves)
            assert (a == b == "–") or abs(float(a) - float(b)) <= 1.0, (got, want)
