"""stac-validator over every output catalogue the commands make (demo, run, job), offline.

The core STAC 1.1.0 and GeoJSON schemas are the copies pystac ships; the extension schemas are the
stand-ins in ``tests/fixtures/stac-schemas`` (see its README). Every schema URL stac-validator asks
for is mapped to a local file, and a URL without one fails the test, so no test needs the internet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

stac_validator = pytest.importorskip("stac_validator.validate")

FIXTURES = Path(__file__).parent / "fixtures" / "stac-schemas"
EXT = "https://stac-extensions.github.io"


def schema_map() -> dict[str, str]:
    """Schema URL -> local file, for every schema an output object refers to."""
    root = Path(str(resources.files("pystac.validation.jsonschemas")))
    core = root / "stac-spec" / "v1.1.0"
    spec = "https://schemas.stacspec.org/v1.1.0"
    out = {f"{spec}/item-spec/json-schema/{p.name}": str(p) for p in core.glob("*.json")}
    out[f"{spec}/catalog-spec/json-schema/catalog.json"] = str(core / "catalog.json")
    out[f"{spec}/collection-spec/json-schema/collection.json"] = str(core / "collection.json")
    for name in ("Feature", "Geometry"):
        out[f"https://geojson.org/schema/{name}.json"] = str(root / "geojson" / f"{name}.json")
    meta = Path(str(resources.files("jsonschema_specifications"))) / "schemas" / "draft7" / "metaschema.json"
    out["http://json-schema.org/draft-07/schema"] = out["http://json-schema.org/draft-07/schema#"] = str(meta)
    for p in FIXTURES.glob("*.json"):
        name, version = p.stem.rsplit("-", 1)
        out[f"{EXT}/{name}/{version}/schema.json"] = str(p)
    return out


def _files(out: Path) -> Iterator[Path]:
    yield out / "catalog.json"
    yield out / "collection.json"
    yield from sorted((out / "items").glob("*.json"))


def validate_catalogue(out: Path) -> int:
    """Validate every object of the output catalogue ``out`` (core and extensions); returns how many."""
    import stac_validator.utilities as utilities

    mapping = schema_map()
    asked: list[str] = []
    original = utilities.fetch_and_parse_schema

    def local_only(path: str) -> dict:
        asked.append(path)
        if path.startswith(("http://", "https://")):
            raise AssertionError(f"schema {path} has no local copy: add it to tests/fixtures/stac-schemas")
        return original(path)

    utilities.fetch_and_parse_schema = local_only  # type: ignore[assignment]
    try:
        n = 0
        for path in _files(out):
            v = stac_validator.StacValidate(str(path), schema_map=mapping)
            ok = v.run()
            assert ok, json.dumps(v.message, indent=1)[:3000]
            n += 1
    finally:
        utilities.fetch_and_parse_schema = original  # type: ignore[assignment]
    assert any(EXT in a or "stac-schemas" in a for a in asked), "the extensions were not validated"
    return n


def test_stand_in_schemas_refuse_what_the_published_ones_refuse(tmp_path):
    """The stand-ins are real checks: a bad class object, a bad cloud cover, a v2-only typo fail."""
    from cloudmask.classes import THREE_CLASSES

    item = {
        "type": "Feature", "stac_version": "1.1.0", "id": "x", "geometry": None, "links": [],
        "properties": {"datetime": "2024-01-01T00:00:00Z", "eo:cloud_cover": 10.0, "proj:code": "EPSG:32631",
                       "proj:epsg": 32631},
        "assets": {"mask": {"href": "x.tif", "classification:classes": THREE_CLASSES.stac_classes()}},
        "stac_extensions": [f"{EXT}/classification/v2.0.0/schema.json", f"{EXT}/eo/v1.1.0/schema.json",
                            f"{EXT}/projection/v1.2.0/schema.json"],
    }
    mapping = schema_map()

    def check(doc: dict) -> bool:
        p = tmp_path / "item.json"
        p.write_text(json.dumps(doc))
        return bool(stac_validator.StacValidate(str(p), schema_map=mapping).run())

    assert check(item)
    bad = json.loads(json.dumps(item))
    bad["assets"]["mask"]["classification:classes"][1]["name"] = "thin cloud"  # spaces are not allowed
    assert not check(bad)
    bad = json.loads(json.dumps(item))
    bad["properties"]["eo:cloud_cover"] = 101
    assert not check(bad)
    bad = json.loads(json.dumps(item))
    bad["properties"]["proj:epgs"] = 32631
    assert not check(bad)
    bad = json.loads(json.dumps(item))
    bad["assets"]["mask"]["classification:classes"][0]["percentage"] = 120.0
    assert not check(bad)


def test_job_output_validates(tmp_path, sample_catalog):
    from cloudmask.jobs import load_spec, run_job

    spec_path = tmp_path / "job.toml"
    spec_path.write_text(f'stac = "{sample_catalog}"\noutput = "{tmp_path / "out"}"\nbackend = "emulated"\n'
                         "quicklook = true\n")
    report = run_job(load_spec(spec_path))
    assert not report.failed
    assert validate_catalogue(tmp_path / "out") == 2 + 3


def test_run_output_validates(tmp_path, sample_catalog):
    from cloudmask.cli import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--stac", str(sample_catalog), "--out", str(out), "--backend", "emulated",
                                    "--no-progress", "--probabilities"])
    assert res.exit_code == 0, res.output
    assert validate_catalogue(out) == 2 + 3
    item = json.loads(next((out / "items").glob("*.json")).read_text())
    assert {"mask", "probabilities", "quicklook"} <= set(item["assets"])


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_demo_output_validates(tmp_path):
    from cloudmask.cli import main

    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--backend", "emulated", "--no-progress"])
    assert res.exit_code == 0, res.output
    n = validate_catalogue(out)
    assert n >= 3
