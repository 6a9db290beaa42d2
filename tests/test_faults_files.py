"""Hostile files (issue 22 items 12 and 13): a card or job spec of binary bytes, numbers that are not finite.

Each is one ``error:`` line and its exit code (3 for a model card, 2 for a job spec), never a traceback
and never a run that fails later, scene by scene.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cloudmask.cli import main
from cloudmask.errors import ConfigError, ModelCardError
from cloudmask.jobs import load_spec
from cloudmask.models import load_model
from cloudmask.sample import demo_catalog

BINARY = bytes(range(256)) * 4  # not UTF-8 (0x80 alone), NUL bytes included


def _card_doc(tmp_path: Path) -> dict:
    base = load_model("ukis-4b-l2a")
    shutil.copy(base.onnx_path, tmp_path / "m.onnx")
    return base.with_onnx(tmp_path / "m.onnx").to_dict(relative_to=tmp_path)


def _run(tmp_path: Path, model: Path) -> object:
    return CliRunner().invoke(main, ["run", "--stac", str(demo_catalog()), "--limit", "1", "--model", str(model),
                                     "--out", str(tmp_path / "out"), "--no-progress"])


@pytest.mark.parametrize("name", ["card.yaml", "card.json"])
def test_binary_card_is_one_error_line_exit_3(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BINARY)
    with pytest.raises(ModelCardError, match="is not text"):
        load_model(path)
    res = _run(tmp_path, path)
    assert res.exit_code == 3, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: model card") and "Traceback" not in res.output


@pytest.mark.parametrize("name", ["job.toml", "job.yaml"])
def test_binary_job_spec_is_one_error_line_exit_2(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(BINARY)
    with pytest.raises(ConfigError, match="is not text"):
        load_spec(path)
    res = CliRunner().invoke(main, ["job", "run", str(path)])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith("error: job spec") and "Traceback" not in res.output


@pytest.mark.parametrize(("field", "value"), [("resolution", ".nan"), ("resolution", ".inf"),
                                              ("resolution", "-.inf")])
def test_non_finite_card_numbers_are_refused_at_load(tmp_path, field, value):
    doc = _card_doc(tmp_path)
    text = yaml.safe_dump({k: v for k, v in doc.items() if k != field}) + f"{field}: {value}\n"
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ModelCardError, match=f"'{field}' .*finite"):
        load_model(path)
    res = _run(tmp_path, path)
    assert res.exit_code == 3, res.output
    assert "finite" in res.output and not (tmp_path / "out" / "summary.json").exists()


def test_non_finite_normalisation_is_refused_at_load(tmp_path):
    doc = _card_doc(tmp_path)
    doc["normalisation"] = {"type": "standardize", "mean": [0.1, float("nan"), 0.1, 0.1], "std": 0.3}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ModelCardError, match="'mean' .*finite"):
        load_model(tmp_path / "m.yaml")


def test_non_finite_job_spec_numbers_are_refused(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(f'stac = "{demo_catalog()}"\noutput = "o"\nresolution = nan\n[retries]\nbackoff = inf\n')
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert "'resolution'" in str(err.value) and "'retries.backoff'" in str(err.value)
    assert "finite" in str(err.value)
