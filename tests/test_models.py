"""Model cards: built-ins from the ukis-csmask package, user cards, and their errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from cloudmask.errors import ModelCardError, UnknownModelError
from cloudmask.models import BUILTIN, BUILTIN_MODELS, ModelCard, list_models, load_model


def test_builtin_cards_come_from_installed_package():
    cards = list_models()
    assert [c.name for c in cards] == list(BUILTIN_MODELS)
    for c in cards[: len(BUILTIN)]:
        assert c.onnx_path.is_file() and "ukis_csmask" in str(c.onnx_path)
        assert c.resolution == 30.0 and c.patch_size == 256
        assert c.classes == ("clear", "cloud", "shadow")
        assert c.n_bands == (6 if "6b" in c.name else 4)
        assert c.bands[:4] == ("blue", "green", "red", "nir")
        assert c.product_level == c.name[-3:]


def test_normalise_uses_card_statistics():
    c = load_model("ukis-4b-l2a")
    x = np.stack([np.full((2, 2), m, np.float32) for m in c.mean])
    assert np.allclose(c.normalise(x), 0.0, atol=1e-6)
    y = np.stack([np.full((2, 2), m + s, np.float32) for m, s in zip(c.mean, c.std, strict=True)])
    assert np.allclose(c.normalise(y), 1.0, atol=1e-5)


def test_unknown_model_message_names_fix():
    with pytest.raises(UnknownModelError, match="ukis-6b-l2a"):
        load_model("no-such-model")


def test_user_card_roundtrip(tmp_path):
    base = load_model("ukis-4b-l1c")
    shutil.copy(base.onnx_path, tmp_path / "mine.onnx")
    card = base.with_onnx(tmp_path / "mine.onnx", name="mine")
    card.save(tmp_path / "mine.yaml")
    # an ONNX file finds the card beside it; the card file itself loads too
    for ref in (tmp_path / "mine.onnx", tmp_path / "mine.yaml"):
        loaded = load_model(ref)
        assert loaded.name == "mine" and loaded.bands == base.bands and loaded.mean == base.mean
        assert loaded.onnx_path == (tmp_path / "mine.onnx").resolve()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bands": ["blue", "purple"]}, "common names"),
        ({"normalisation": {"mean": [0.1, 0.2], "std": [0.1, 0.2]}}, "one value or one per band"),
        ({"normalisation": {"type": "minmax", "low": 0, "high": 0}}, "high' > 'low"),
        ({"normalisation": {"type": "whiten"}}, "standardize, scale, minmax, log1p, clip, chain"),
        ({"classes": ["clear", "cloud"]}, "ONNX output has 3 channels but the card lists 2 classes"),
        ({"classes": ["clear", "cloud", "shadow", "thin_cloud"]}, "ONNX output has 3 channels.*4 classes"),
        ({"onnx": "missing.onnx"}, "does not exist"),
        ({"classes": ["clear", "fog"]}, "classes"),
        ({"product_level": "l3"}, "product_level"),
    ],
)
def test_bad_cards_are_rejected_with_reason(tmp_path, change, message):
    base = load_model("ukis-4b-l2a")
    shutil.copy(base.onnx_path, tmp_path / "m.onnx")
    doc = base.with_onnx(tmp_path / "m.onnx").to_dict(relative_to=tmp_path)
    doc.update(change)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelCardError, match=message):
        load_model(tmp_path / "m.yaml")


def test_onnx_without_card_says_how_to_write_one(tmp_path):
    shutil.copy(load_model("ukis-4b-l2a").onnx_path, tmp_path / "bare.onnx")
    with pytest.raises(ModelCardError, match="no model card"):
        load_model(tmp_path / "bare.onnx")


def test_card_missing_field(tmp_path):
    (tmp_path / "c.yaml").write_text("name: x\nbands: [blue]\n")
    with pytest.raises(ModelCardError, match="missing field"):
        load_model(tmp_path / "c.yaml")


def test_card_with_onnx_is_a_new_card(tmp_path):
    c = load_model("ukis-6b-l2a")
    d = c.with_onnx(tmp_path / "m.onnx", name="x")
    assert isinstance(d, ModelCard) and d.onnx_path == tmp_path / "m.onnx" and d.name == "x"
    assert d.bands == c.bands and d.normalisation == c.normalisation
    assert c.name == "ukis-6b-l2a" and c == load_model("ukis-6b-l2a")  # the registry's card is untouched


def test_cli_models_lists_kinds_and_s2cloudless():
    from click.testing import CliRunner

    from cloudmask.cli import main

    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("s2cloudless"))
    assert "pixel" in line and "clear,cloud" in line and "L1C" in line


def test_class_count_checked_when_the_graph_leaves_the_output_shape_open(tmp_path):
    """A graph without a declared output shape: shape inference finds the channels and the card is refused."""
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 1, 1], [0.1] * 12)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "seg",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "s.onnx"))
    card = {"onnx": "s.onnx", "bands": ["blue", "green", "red", "nir"], "product_level": "l2a", "resolution": 30,
            "normalisation": {"type": "scale", "multiply": 1}, "patch_size": 32, "classes": ["clear", "cloud"]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ModelCardError, match="ONNX output has 3 channels but the card lists 2 classes"):
        load_model(tmp_path / "s.yaml")
    card["classes"] = ["clear", "thick cloud", "thin cloud"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(card))
    assert load_model(tmp_path / "s.yaml").class_index.tolist() == [0, 1, 3]


def test_s2cloudless_without_its_package_says_how_to_install(monkeypatch, tmp_path):
    from cloudmask.builtin import s2cloudless

    monkeypatch.setenv("CLOUDMASK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(s2cloudless, "package_version", lambda: None)
    with pytest.raises(UnknownModelError, match=r"pip install 's2-cloudmask\[s2cloudless\]'"):
        load_model("s2cloudless")
    assert "s2cloudless" in [c.name for c in list_models()]  # still listed
    assert not any(tmp_path.iterdir())  # nothing converted or downloaded
