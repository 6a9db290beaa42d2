"""Normalisations as data: every type against a hand computation, chains, card forms and errors."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import yaml

from cloudmask.errors import ModelCardError
from cloudmask.models import load_model
from cloudmask.normalisation import TYPES, from_card

# two bands, two pixels: band 0 = [0.1, 0.5], band 1 = [0.2, 1.0]
X = np.array([[0.1, 0.5], [0.2, 1.0]], np.float32)


def run(spec):
    return from_card(spec).apply(X)


def test_standardize_by_hand():
    out = run({"type": "standardize", "mean": [0.1, 0.4], "std": [0.2, 0.3]})
    assert out == pytest.approx(np.array([[0.0, 2.0], [-2 / 3, 2.0]]), abs=1e-6)
    # the original card form (no type) is a standardize; a scalar applies to every band
    assert run({"mean": 0.1, "std": 0.5}) == pytest.approx(np.array([[0.0, 0.8], [0.2, 1.8]]), abs=1e-6)


def test_scale_by_hand():
    out = run({"type": "scale", "multiply": [10000, 2], "add": [-1000, 1]})
    assert out == pytest.approx(np.array([[0.0, 4000.0], [1.4, 3.0]]), abs=1e-3)
    assert run({"type": "scale", "multiply": 255}) == pytest.approx(np.array([[25.5, 127.5], [51, 255]]), abs=1e-4)


def test_minmax_clips_by_hand():
    out = run({"type": "minmax", "low": [0.0, 0.3], "high": [0.4, 0.8]})
    # band 0: 0.1/0.4 = 0.25, 0.5/0.4 = 1.25 -> 1; band 1: (0.2-0.3)/0.5 = -0.2 -> 0, (1.0-0.3)/0.5 = 1.4 -> 1
    assert out == pytest.approx(np.array([[0.25, 1.0], [0.0, 1.0]]), abs=1e-6)


def test_log1p_by_hand():
    out = run({"type": "log1p"})
    assert out == pytest.approx(np.array([[math.log(1.1), math.log(1.5)], [math.log(1.2), math.log(2.0)]]), abs=1e-6)


def test_clip_by_hand():
    assert run({"type": "clip", "low": 0.15, "high": 0.6}) == pytest.approx(np.array([[0.15, 0.5], [0.2, 0.6]]))
    assert run({"type": "clip", "high": [0.3, 0.9]}) == pytest.approx(np.array([[0.1, 0.3], [0.2, 0.9]]))


def test_chain_applies_in_order_and_a_list_means_a_chain():
    chain = {"type": "chain", "steps": [{"type": "clip", "high": 0.4}, {"type": "scale", "multiply": 10},
                                        {"type": "log1p"}]}
    expected = np.log1p(np.array([[1.0, 4.0], [2.0, 4.0]]))
    assert run(chain) == pytest.approx(expected, abs=1e-6)
    assert run(chain["steps"]) == pytest.approx(expected, abs=1e-6)
    norm = from_card(chain)
    assert from_card(norm.to_dict()) == norm and norm.describe() == "clip -> scale -> log1p"


def test_in_place_on_bands_first_patches():
    norm = from_card({"type": "minmax", "low": [0.0, 0.3], "high": [0.4, 0.8]})
    patch = np.stack([np.full((3, 3), 0.2, np.float32), np.full((3, 3), 0.55, np.float32)])
    out = norm.apply(patch, out=patch)
    assert out is patch and np.allclose(patch[0], 0.5) and np.allclose(patch[1], 0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "whiten"}, "unknown normalisation type 'whiten'; use one of " + ", ".join(TYPES)),
        ({"type": "minmax", "low": 0.0}, "minmax needs 'low' and 'high'"),
        ({"type": "clip"}, "clip needs 'low' and/or 'high'"),
        ({"type": "scale", "factor": 2}, "does not take factor"),
        ({"type": "chain", "steps": []}, "non-empty 'steps'"),
        ({"type": "standardize", "mean": "a", "std": 1}, "'mean' must be a number or a list"),
    ],
)
def test_errors_name_the_fix(spec, message):
    with pytest.raises(ModelCardError, match=message.replace("(", r"\(")):
        from_card(spec).validate(2)


def test_card_with_minmax_normalises_as_written_and_round_trips(tmp_path):
    base = load_model("ukis-4b-l2a")
    shutil.copy(base.onnx_path, tmp_path / "m.onnx")
    doc = base.with_onnx(tmp_path / "m.onnx").to_dict(relative_to=tmp_path)
    doc["normalisation"] = [{"type": "minmax", "low": 0.0, "high": 0.5}, {"type": "scale", "multiply": 2, "add": -1}]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    card = load_model(tmp_path / "m.yaml")
    refl = np.full((4, 2, 2), 0.125, np.float32)
    assert np.allclose(card.normalise(refl), -0.5)  # (0.125 / 0.5) * 2 - 1, never silently standardised
    assert card.mean == () and card.std == ()
    card.save(tmp_path / "again.yaml")
    assert load_model(tmp_path / "again.yaml").normalisation == card.normalisation


def test_affine_chains_fold_into_one_multiply_add():
    from cloudmask.normalisation import from_card

    x = np.random.default_rng(1).uniform(0, 0.6, (3, 8, 9)).astype(np.float32)
    chain = from_card([{"type": "standardize", "mean": [0.1, 0.2, 0.3], "std": [0.5, 0.25, 2.0]},
                       {"type": "scale", "multiply": 2.0, "add": [1.0, 0.0, -1.0]}])
    mul, add = chain.affine(3)
    assert mul.shape == add.shape == (3,)
    assert np.allclose(x * mul[:, None, None] + add[:, None, None], chain.apply(x), atol=1e-5)
    from cloudmask.normalisation import Normalisation

    ident = Normalisation(()).affine(2)
    assert ident is not None and np.array_equal(ident[0], [1.0, 1.0]) and np.array_equal(ident[1], [0.0, 0.0])
    assert from_card({"type": "log1p"}).affine(3) is None  # not affine: the reader cannot fold it
    assert from_card([{"type": "scale", "multiply": 2.0}, {"type": "clip", "low": 0.0}]).affine(3) is None
