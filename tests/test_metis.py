"""Metis toolchain on the four built-in ukis-csmask models and real Sentinel-2 patches from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloudmask.metis.calibration import array_patches, calibration_set
from cloudmask.metis.check import check
from cloudmask.metis.export import ExportResult, export
from cloudmask.metis.rules import derive_rules, packaged_rules_dict
from cloudmask.models import BUILTIN, ModelCard, load_model

try:
    from .conftest import shared_dir
except ImportError:  # pragma: no cover - run outside the tests package
    try:
        from conftest import shared_dir  # type: ignore[no-redef]
    except ImportError:
        import os

        def shared_dir(*parts: str) -> Path:  # type: ignore[misc]
            path = Path(__file__).resolve().parents[2] / "shared"
            path = path.joinpath(*parts)
            if not path.exists():
                if os.environ.get("CLOUDMASK_REQUIRE_SHARED") == "1":
                    pytest.fail(f"{path} missing (CLOUDMASK_REQUIRE_SHARED=1)", pytrace=False)
                pytest.skip(f"../shared not present: {path}")
            return path


ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxsim")

PATCH = ("data", "real", "ukis-csmask-patch", "sentinel2.npz")
S2CLOUDLESS = ("data", "real", "s2cloudless-l1c-arrays", "input_arrays.npz")
#: ukis patch band order: blue green red nir swir16 swir22
PATCH_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ExportResult]:
    """Each built-in model exported once per session."""
    root = tmp_path_factory.mktemp("metis-export")
    return {name: export(name, root / name) for name in BUILTIN}


def _session(path: Path) -> object:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _real_tiles(card: ModelCard) -> list[tuple[np.ndarray, np.ndarray]]:
    """The 512x512 ukis patch as four normalised 256x256 tiles with cloudmask labels (0/1/2)."""
    d = np.load(shared_dir(*PATCH))
    img = d["img"].transpose(2, 0, 1)
    img = img[[PATCH_BANDS.index(b) for b in card.bands]]
    msk = d["msk"][..., 0]
    labels = np.zeros(msk.shape, np.uint8)
    labels[msk == 4] = 1
    labels[msk == 0] = 2
    x = card.normalise(img)
    p = card.patch_size
    return [(x[:, r:r + p, c:c + p], labels[r:r + p, c:c + p]) for r in (0, p) for c in (0, p)]


@pytest.mark.shared
def test_packaged_rules_agree_with_shared_facts() -> None:
    shared = json.loads(shared_dir("metis", "onnx-ops.json").read_text())
    assert packaged_rules_dict() == derive_rules(shared), (
        "cloudmask/data/metis_ops.json drifted from shared/metis/onnx-ops.json: "
        "python -m cloudmask.metis.rules ../shared/metis/onnx-ops.json"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN)
def test_exported_builtin_passes_check(exported: dict[str, ExportResult], name: str) -> None:
    res = exported[name]
    report = check(res.onnx_path)
    assert report.ok, report.format()
    assert report.input_shapes == {"input": [1, res.card.n_bands, 256, 256]}
    card = load_model(res.card_path)
    assert card.onnx_path == res.onnx_path.resolve() and card.mean == load_model(name).mean


@pytest.mark.slow
def test_original_ukis_graph_has_violations() -> None:
    report = check(load_model("ukis-6b-l1c").onnx_path)
    failing = {row.op for row in report.table() if row.violations}
    assert {"Shape", "Gather", "ConstantOfShape", "Cast", "Pad"} <= failing
    assert {v.rule for v in report.model_violations} >= {"batch", "static_shapes"}
    assert report.middle_violations and not report.compilable
    shape_nodes = [n for n in report.nodes if n.op == "Shape"]
    assert all(n.foldable for n in shape_nodes)


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("name", BUILTIN)
def test_exported_graph_matches_original_on_real_patch(exported: dict[str, ExportResult], name: str) -> None:
    original = load_model(name)
    s0, s1 = _session(original.onnx_path), _session(exported[name].onnx_path)
    agree = total = 0
    for x, _ in _real_tiles(original):
        a = s0.run(None, {"input": x[None]})[0]  # type: ignore[attr-defined]
        b = s1.run(None, {"input": x[None]})[0]  # type: ignore[attr-defined]
        assert np.abs(a - b).max() <= 0.05
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += a.shape[2] * a.shape[3]
    assert agree / total >= 0.999


@pytest.mark.slow
@pytest.mark.shared
def test_int8_preview_on_real_patch(exported: dict[str, ExportResult], tmp_path: Path) -> None:
    """Calibrate on the s2cloudless L1C scene, hold out the labelled ukis patch."""
    from cloudmask.metis.int8 import int8_preview

    res = exported["ukis-6b-l1c"]
    card = load_model(res.card_path)
    s2 = np.load(shared_dir(*S2CLOUDLESS))["s2_im"][0]  # B01..B12 incl. B8A and B10
    refl = s2[..., [1, 2, 3, 7, 11, 12]].transpose(2, 0, 1)  # blue green red nir swir16 swir22
    patches = array_patches("s2cloudless-test-input", refl, card, stride=128)
    manifest = calibration_set(patches, tmp_path / "calib", card, samples=12)
    assert json.loads(manifest.read_text())["samples"] == 12
    held_out = [(x, labels) for x, labels in _real_tiles(card)]
    report = int8_preview(card, tmp_path / "calib", held_out=held_out, out_dir=tmp_path / "int8")
    assert report.patches == 4 and report.labelled_pixels == 512 * 512
    assert report.pixel_agreement > 0.9
    assert set(report.iou_vs_fp32) == {"clear", "cloud", "shadow"}
    int8_cloud = report.iou_vs_labels["int8"]["cloud"]
    fp32_cloud = report.iou_vs_labels["fp32"]["cloud"]
    assert fp32_cloud is not None and fp32_cloud > 0.6  # shared SOURCE.md sanity check: 0.74
    assert int8_cloud is not None and abs(int8_cloud - fp32_cloud) < 0.05  # README: 0.752 vs 0.743
    # the int8 model runs through the normal pipeline as a model
    from cloudmask.runtime import OnnxRunner

    q = load_model(tmp_path / "int8" / "card.yaml")
    assert q.name.endswith("-int8") and q.extra["quantization"]["format"] == "QDQ"
    out = OnnxRunner(q).run(held_out[0][0][None])
    assert out.shape == (1, 3, 256, 256)
