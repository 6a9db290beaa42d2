"""Card files are validated as a whole (issue 24 item 5): unknown keys are errors with a "did you mean",
every problem is reported at once, and every card this repository writes or ships still loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cloudmask.card import CardFile
from cloudmask.cli import main
from cloudmask.errors import ModelCardError
from cloudmask.models import load_model
from cloudmask.sample import demo_catalog

REPO = Path(__file__).resolve().parents[1]


def _card(tmp_path: Path, **change: object) -> Path:
    base = load_model("ukis-4b-l2a")
    shutil.copy(base.onnx_path, tmp_path / "m.onnx")
    doc = base.with_onnx(tmp_path / "m.onnx").to_dict(relative_to=tmp_path)
    doc.update(change)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_misspelt_keys_are_errors_with_did_you_mean(tmp_path):
    path = _card(tmp_path, outptu="probabilities", patchsize=128)
    with pytest.raises(ModelCardError) as err:
        load_model(path)
    msg = str(err.value)
    assert "2 problems" in msg
    assert "unknown key 'outptu' (did you mean 'output'?)" in msg
    assert "unknown key 'patchsize' (did you mean 'patch_size'?)" in msg


def test_every_problem_is_reported_at_once(tmp_path):
    path = _card(tmp_path, bands=["blue", "purple", "red", "nir"], product_level="l3", kind="blob", colour=1)
    with pytest.raises(ModelCardError) as err:
        load_model(path)
    msg = str(err.value)
    assert "4 problems" in msg and "'bands'" in msg and "'product_level'" in msg and "'kind'" in msg
    assert "unknown key 'colour'" in msg


def test_cli_exit_3_one_line_for_a_misspelt_card(tmp_path):
    path = _card(tmp_path, outptu="probabilities")
    res = CliRunner().invoke(main, ["run", "--stac", str(demo_catalog()), "--limit", "1", "--model", str(path),
                                    "--out", str(tmp_path / "out"), "--no-progress"])
    assert res.exit_code == 3, res.output
    assert "did you mean 'output'" in res.output and "Traceback" not in res.output
    assert not list((tmp_path / "out").glob("*_cloudmask.tif"))


def test_cards_the_repository_ships_and_writes_load(tmp_path):
    """The shipped example cards, a card with every optional key the code writes, and README's card."""
    for card in sorted((REPO / "cloudmask" / "data" / "models").rglob("*.yaml")):
        assert load_model(card).kind == "pixel"
    path = _card(tmp_path, license="Apache-2.0", architecture="unet", postprocess={"min_region": 4},
                 metis={"cores": 4}, metis_model="compiled.json", quantization={"mode": "per-tensor"},
                 evaluation={"iou": 0.9}, version=1.0, resolution="30")
    card = load_model(path)
    assert card.version == "1.0" and card.resolution == 30.0
    # metis_model is resolved relative to the card file, like onnx
    assert card.extra["metis_model"] == str((path.parent / "compiled.json").resolve())
    assert card.extra["postprocess"] == {"min_region": 4}
    assert "name" not in card.extra and "onnx" not in card.extra  # only the extras land in extra
    # README's "Bring your own model" card: every key it shows is a field
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Bring your own model", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert set(yaml.safe_load(block)) <= set(CardFile.model_fields)


def test_a_new_card_field_is_one_line():
    """Extras are simply the fields that are not ModelCard arguments."""
    extras = set(CardFile.model_fields) - set(CardFile.card_arguments())
    assert {"metis_model", "fold", "postprocess"} <= extras
    assert set(CardFile.card_arguments()) <= set(CardFile.model_fields)


def test_job_spec_unknown_key_says_did_you_mean(tmp_path):
    from cloudmask.errors import ConfigError
    from cloudmask.jobs import load_spec

    path = tmp_path / "job.toml"
    path.write_text(f'stac = "{demo_catalog()}"\noutput = "o"\nmax_clod = 20\n')
    with pytest.raises(ConfigError, match=r"unknown key 'max_clod' \(did you mean 'max_cloud'\?\)"):
        load_spec(path)
