"""Catalogue jobs: incremental, resumable, locked, failure-isolating, distributed, catalogued, pushed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from click.testing import CliRunner

from cloudmask.cli import main
from cloudmask.errors import ConfigError
from cloudmask.jobs import JobLockedError, SceneFailuresError, check_done, load_spec, run_job
from cloudmask.jobs.spec import parse_duration, resolve_datetime, spec_from_dict
from cloudmask.jobs.state import JobLock, Journal, clean_temporaries, stale_temporaries
from cloudmask.layout import output_stem, safe_name
from cloudmask.output_catalog import file_checksum

# The stac_api fixture starts stac-fastapi-pgstac with a copy of os.environ; the push test needs the
# Transactions extension, which stac-fastapi-pgstac enables only with this setting.

SCENES = 3


def write_spec(path: Path, stac: Path | str, output: str = "out", **kw: Any) -> Path:
    """A TOML job spec at ``path``; ``kw`` values are TOML literals or Python scalars."""
    lines = [f'stac = "{stac}"', f'output = "{output}"']
    retries = kw.pop("retries", {"count": 0, "backoff": 0.05})
    for k, v in kw.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[retries]"] + [f"{k} = {v}" for k, v in retries.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def masks(out: Path) -> list[Path]:
    return sorted(out.glob("*_cloudmask.tif"))


def temporaries(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith((".tmp", ".tmp.tif"))]


def journal_events(out: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in Journal(out).events() if e["event"] == kind]


def cli_job(*args: str) -> Any:
    return CliRunner().invoke(main, ["job", *map(str, args)])


def job_subprocess(spec: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cloudmask.cli", "job", "run", str(spec), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(pred: Any, timeout: float, proc: subprocess.Popen[str] | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"job ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture()
def slow_spec(tmp_path, sample_catalog):
    """An emulated-device job slow enough to interrupt: 16 patches per scene at 10 m, 0.12 s each."""
    return write_spec(tmp_path / "job" / "slow.toml", sample_catalog, backend="emulated", resolution=10,
                      emulated_latency=0.12)


# --------------------------------------------------------------------------------------- 1. incremental


def test_run_twice_second_run_does_nothing(tmp_path, sample_catalog):
    spec = write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated", concurrency=2)
    res = cli_job("run", spec)
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"  # relative to the spec's directory
    assert len(masks(out)) == SCENES
    assert f"{SCENES} masked, 0 failed" in res.output
    assert sorted(p.name for p in (out / "items").glob("*.json")) == sorted(
        f"{output_stem(i.id)}.json" for i in pystac.Catalog.from_file(str(sample_catalog)).get_items(recursive=True))
    before = {p: p.stat().st_mtime_ns for p in masks(out)}

    res2 = cli_job("run", spec)
    assert res2.exit_code == 0, res2.output
    assert f"{SCENES} already done, 0 masked" in res2.output
    assert {p: p.stat().st_mtime_ns for p in masks(out)} == before  # nothing rewritten
    assert len(journal_events(out, "done")) == SCENES
    assert len(journal_events(out, "run-end")) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["processed"] == 0 and summary["run"]["skipped"] == SCENES
    assert len(summary["scenes"]) == SCENES
    assert (out / "summary.csv").read_text().count("\n") == SCENES + 1
    row = summary["scenes"][0]
    assert {"scene", "cloud", "shadow", "clear", "nodata", "seconds"} <= set(row)

    status = cli_job("status", spec, "--json")
    assert status.exit_code == 0, status.output
    st = json.loads(status.output)
    assert len(st["done"]) == SCENES and st["pending"] == [] and st["failed"] == {}


def test_done_means_checksum_matches(tmp_path, sample_catalog):
    spec = load_spec(write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated"))
    run_job(spec)
    victim = masks(spec.output)[0]
    scene = json.loads(next((spec.output / "items").glob("*.json")).read_text())["properties"]["cloudmask:source_id"]
    assert check_done(spec.output, scene).done
    data = bytearray(victim.read_bytes())  # same size, one byte different
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    changed = [m for m in masks(spec.output) if not check_done(spec.output, m.name.removesuffix("_cloudmask.tif")).done]
    assert changed == [victim]
    report = run_job(spec)
    assert len(report.processed) == 1 and report.skipped == SCENES - 1
    assert all(check_done(spec.output, s).done for s in [scene])


# ------------------------------------------------------------------------------------- 2. kill -9


@pytest.mark.slow
def test_kill_9_mid_run_then_resume(tmp_path, sample_catalog, slow_spec):
    out = slow_spec.parent / "out"
    proc = job_subprocess(slow_spec)
    try:
        wait_for(lambda: any((out / "items").glob("*.json")), 60, proc, "the first output item")
        # let the next scene get going so that its temporaries exist when the run dies
        wait_for(lambda: len(temporaries(out)) > 0, 20, proc, "the next scene's temporary file")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = temporaries(out)
    assert left, "a killed run should have left a temporary mask behind"
    assert len(masks(out)) < SCENES
    assert set(stale_temporaries(out)) == set(left)  # their writer is dead

    fast = write_spec(slow_spec.parent / "fast.toml", sample_catalog, backend="emulated", resolution=10)
    report = run_job(load_spec(fast))  # the same output directory: the same job
    assert report.removed_temporaries == len(left)
    assert report.skipped >= 1 and len(report.processed) == SCENES - report.skipped
    assert temporaries(out) == []
    from rio_cogeo.cogeo import cog_validate

    found = masks(out)
    assert len(found) == SCENES and len({p.name for p in found}) == SCENES
    for p in found:
        valid, errors, _ = cog_validate(str(p))
        assert valid, (p, errors)
    items = [pystac.Item.from_file(str(p)) for p in (out / "items").glob("*.json")]
    assert len(items) == SCENES and len({i.id for i in items}) == SCENES
    for it in items:
        assert check_done(out, it.properties["cloudmask:source_id"]).done
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert len(list(cat.get_items(recursive=True))) == SCENES


# ------------------------------------------------------------------------------------- 3. two runs


@pytest.mark.slow
def test_second_run_of_a_running_job_exits_or_waits(tmp_path, slow_spec):
    out = slow_spec.parent / "out"
    proc = job_subprocess(slow_spec)
    try:
        wait_for(lambda: JobLock(out).holder().get("pid") == proc.pid, 30, proc, "the lock")
        res = cli_job("run", slow_spec)
        assert res.exit_code == JobLockedError.exit_code == 75, res.output
        assert "another run of this job is in progress" in res.output
        assert f"pid {proc.pid}" in res.output and "--wait" in res.output
        assert proc.poll() is None and len(masks(out)) < SCENES  # refused while the first still runs

        t0 = time.monotonic()
        res = cli_job("run", slow_spec, "--wait")
        assert res.exit_code == 0, res.output
        assert proc.wait(30) == 0  # the first run finished its work: the second waited for it
        assert f"{SCENES} already done, 0 masked" in res.output
        assert time.monotonic() - t0 > 0.5
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert len(masks(out)) == SCENES


def test_lock_is_released_when_holder_dies(tmp_path):
    code = ("import sys, time; from cloudmask.jobs.state import JobLock; "
            f"lock = JobLock({str(tmp_path)!r}, 'x').acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(JobLockedError, match=f"pid {proc.pid}"):
            JobLock(tmp_path).acquire()
        proc.kill()
        proc.wait()
        JobLock(tmp_path).acquire().release()  # the kernel dropped the dead holder's lock
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------- 4. failing scene


def test_corrupt_asset_fails_one_scene_only(tmp_path, sample_catalog):
    copy = tmp_path / "catalogue"
    shutil.copytree(sample_catalog.parent, copy)
    items = sorted(pystac.Catalog.from_file(str(copy / "catalog.json")).get_items(recursive=True), key=lambda i: i.id)
    bad = items[1]
    band = Path(bad.assets["swir16"].get_absolute_href() or "")
    band.write_bytes(os.urandom(4096))
    spec = write_spec(tmp_path / "job.toml", copy / "catalog.json", backend="emulated",
                      retries={"count": 1, "backoff": 0.05})
    res = cli_job("run", spec)
    assert res.exit_code == SceneFailuresError.exit_code == 8, res.output
    assert f"1 of {SCENES} scene(s) failed ({bad.id})" in res.output
    out = tmp_path / "out"
    assert len(masks(out)) == SCENES - 1
    failed = journal_events(out, "failed")
    assert [e["scene"] for e in failed] == [bad.id]
    assert failed[0]["error_type"] == "ReadError" and "B11.tif" in failed[0]["error"]
    assert failed[0]["attempts"] == 2 and len(journal_events(out, "retry")) == 1
    assert temporaries(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert {r["scene"]: r["status"] for r in summary["scenes"]}[bad.id] == "failed"

    st = json.loads(cli_job("status", spec, "--json").output)
    assert len(st["done"]) == SCENES - 1 and list(st["failed"]) == [bad.id] and st["pending"] == []
    # repaired: the next run does the failed scene only
    shutil.copy(Path(items[0].assets["swir16"].get_absolute_href() or ""), band)
    report = run_job(load_spec(spec))
    assert [o.scene for o in report.processed] == [bad.id] and report.skipped == SCENES - 1


# --------------------------------------------------------------------------------- 5. dask cluster


@pytest.mark.slow
def test_local_cluster_matches_single_process(tmp_path, sample_catalog):
    base = dict(backend="onnxruntime", model="ukis-6b-l2a")
    single = run_job(load_spec(write_spec(tmp_path / "a" / "job.toml", sample_catalog, **base)))
    spec_b = load_spec(write_spec(tmp_path / "b" / "job.toml", sample_catalog, concurrency=2, **base))
    dist = run_job(spec_b, workers=2)
    assert len(single.processed) == len(dist.processed) == SCENES
    a, b = masks(tmp_path / "a" / "out"), masks(tmp_path / "b" / "out")
    assert [p.name for p in a] == [p.name for p in b]
    for pa, pb in zip(a, b, strict=True):
        with rasterio.open(pa) as da, rasterio.open(pb) as db:
            assert da.profile == db.profile
            np.testing.assert_array_equal(da.read(), db.read())
    # the real model ran (not a constant), and each worker process loaded it once
    assert any(o.row and o.row["cloud"] > 1 for o in dist.processed)
    driver = os.getpid()
    assert all(o.pid != driver for o in dist.processed)
    for o in dist.processed:
        assert o.loads == {"ukis-6b-l2a@onnxruntime": 1}, o.loads
    journal = journal_events(tmp_path / "b" / "out", "run-start")
    assert journal[-1]["mode"] == "dask"


# ------------------------------------------------------------------------------- 6. output catalogue


def test_output_items_carry_every_field(tmp_path, sample_catalog):
    from pystac.extensions.classification import ClassificationExtension
    from pystac.extensions.eo import EOExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    spec = load_spec(write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated"))
    run_job(spec)
    out = spec.output
    sources = {i.id: i for i in pystac.Catalog.from_file(str(sample_catalog)).get_items(recursive=True)}
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    coll = cat.get_child("cloudmask")
    assert isinstance(coll, pystac.Collection)
    items = list(cat.get_items(recursive=True))
    assert len(items) == SCENES
    for item in items:
        src = sources[item.properties["cloudmask:source_id"]]
        assert item.id == output_stem(src.id) and item.collection_id == "cloudmask"
        assert item.datetime == src.datetime
        proj = ProjectionExtension.ext(item)
        assert proj.code == "EPSG:32631" and proj.epsg == 32631
        assert proj.shape == [200, 200] and proj.transform is not None and proj.transform[0] == 30.0
        assert proj.bbox is not None
        assert EOExtension.ext(item).cloud_cover is not None
        asset = item.assets["mask"]
        assert asset.media_type == pystac.MediaType.COG and "data" in (asset.roles or [])
        path = Path(asset.get_absolute_href() or "")
        assert path.is_file() and path.parent == out
        f = FileExtension.ext(asset)
        assert f.checksum == file_checksum(path) and f.size == path.stat().st_size
        bands = RasterExtension.ext(asset).bands
        assert bands is not None and bands[0].nodata == 255 and bands[0].data_type == "uint8"
        assert bands[0].spatial_resolution == 30.0
        classes = ClassificationExtension.ext(asset).classes
        assert classes is not None
        assert {c.value: c.name for c in classes} == {0: "clear", 1: "cloud", 2: "shadow", 255: "nodata"}
        p = item.properties
        assert p["processing:software"]["cloudmask"] and "processing:lineage" in p and "processing:level" in p
        assert "processing:datetime" in p and p["processing:version"]
        assert {"cloudmask:shadow_cover", "cloudmask:clear_cover", "cloudmask:nodata_percentage"}.isdisjoint(p)
        raw = json.loads((out / "items" / f"{item.id}.json").read_text())["properties"]  # pystac drops proj:epsg
        assert raw["proj:epsg"] == int(p["proj:code"].split(":")[1])
        total = sum(c.count for c in classes if c.count is not None)
        assert total == p["proj:shape"][0] * p["proj:shape"][1]  # classification v2 counts every pixel
        valid_pct = [c.percentage for c in classes if c.value != 255]
        assert all(v is not None for v in valid_pct) and abs(sum(valid_pct) - 100.0) < 0.01  # type: ignore[arg-type]
        assert any(u.endswith("/processing/v1.2.0/schema.json") for u in item.stac_extensions)
        derived = item.get_links("derived_from")
        assert len(derived) == 1 and pystac.Item.from_file(derived[0].get_absolute_href() or "").id == src.id
        assert item.get_collection() is not None
    # collection extents follow the items
    bbox = coll.extent.spatial.bboxes[0]
    for it in items:
        assert it.bbox is not None
        assert bbox[0] <= it.bbox[0] and bbox[1] <= it.bbox[1] and bbox[2] >= it.bbox[2] and bbox[3] >= it.bbox[3]
    t0, t1 = coll.extent.temporal.intervals[0]
    assert t0 == min(s.datetime for s in sources.values()) and t1 == max(s.datetime for s in sources.values())
    assert coll.summaries.to_dict()["proj:code"] == ["EPSG:32631"]


# ------------------------------------------------------------------------------------- safety


def test_safe_name_never_escapes():
    for bad in ("../../x", "/etc/passwd", "a/../../b", "..", "a\\..\\b", "x\x00y", " ../ .."):
        try:
            name = safe_name(bad)
        except ConfigError:
            continue
        assert "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".")
    assert safe_name("../../x") == "x"


def test_hostile_item_id_stays_inside_output(tmp_path, sample_catalog):
    copy = tmp_path / "cat" / "deep"
    shutil.copytree(sample_catalog.parent, copy)
    item_json = next(p for p in copy.rglob("*.json") if p.parent.parent.name == "sentinel-2-c1-l2a")
    doc = json.loads(item_json.read_text())
    doc["id"] = "../../evil"
    item_json.write_text(json.dumps(doc))
    out = tmp_path / "work" / "out"
    spec = load_spec(write_spec(tmp_path / "work" / "job.toml", copy / "catalog.json", backend="emulated"))
    before = {p for p in tmp_path.rglob("*") if out not in p.parents}
    report = run_job(spec)
    assert len(report.processed) == SCENES
    after = {p for p in tmp_path.rglob("*") if out not in p.parents and p != out}
    assert after - before == set(), "nothing may be written outside the output directory"
    stem = output_stem("../../evil")  # sanitised, so a hash of the id keeps it apart from an item named "evil"
    assert stem.startswith("evil-") and len(stem) == len("evil-") + 8
    assert (out / f"{stem}_cloudmask.tif").is_file() and (out / "items" / f"{stem}.json").is_file()
    assert json.loads((out / "items" / f"{stem}.json").read_text())["properties"]["cloudmask:source_id"] == "../../evil"
    assert check_done(out, "../../evil").done
    assert run_job(spec).skipped == SCENES


# ------------------------------------------------------------------------------------ temporaries


def test_clean_temporaries_spares_live_writers(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "items").mkdir()
        dead = [tmp_path / ".a_cloudmask.tif.blocks-999999999-0a1b2c3d.tmp.tif",
                tmp_path / ".a_cloudmask.tif.cog-999999999-0a1b2c3d.tmp.tif",
                tmp_path / "items" / ".a.json.999999999.tmp",
                tmp_path / f".b_cloudmask.tif.blocks-{os.getpid()}-0a1b2c3d.tmp.tif"]
        live = tmp_path / f".c_cloudmask.tif.blocks-{sleeper.pid}-0a1b2c3d.tmp.tif"
        keep = tmp_path / ".not-ours.tif"
        for p in [*dead, live, keep]:
            p.write_bytes(b"x")
        assert sorted(clean_temporaries(tmp_path)) == sorted(dead)
        assert live.exists() and keep.exists()
        os.utime(live, (time.time() - 2 * 86400,) * 2)
        assert clean_temporaries(tmp_path) == [live]  # too old to be in flight
    finally:
        sleeper.kill()
        sleeper.wait()


# ------------------------------------------------------------------------------------------- spec


def test_spec_resolves_paths_and_relative_windows(tmp_path, sample_catalog):
    (tmp_path / "aoi.geojson").write_text(json.dumps(
        {"type": "Polygon", "coordinates": [[[1.7, 43.3], [1.8, 43.3], [1.8, 43.4], [1.7, 43.3]]]}))
    spec = load_spec(write_spec(tmp_path / "job.toml", sample_catalog, aoi="aoi.geojson", datetime="last 10 days",
                                max_cloud=80, concurrency=3, retries={"count": 4, "backoff": 2}))
    assert spec.aoi == str(tmp_path / "aoi.geojson") and spec.output == tmp_path / "out"
    assert spec.retries.count == 4 and spec.retries.delay(1) == 2 and spec.retries.delay(3) == 8
    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    assert spec.search_datetime(now) == "2024-06-10T12:00:00Z/2024-06-20T12:00:00Z"
    assert resolve_datetime("P1W", now) == "2024-06-13T12:00:00Z/2024-06-20T12:00:00Z"
    assert resolve_datetime("PT36H", now) == "2024-06-19T00:00:00Z/2024-06-20T12:00:00Z"
    assert resolve_datetime("2024-06-01/2024-06-30", now) == "2024-06-01/2024-06-30"
    assert parse_duration("past 2 weeks") is not None and parse_duration("2024-06") is None
    yaml_spec = tmp_path / "sub" / "job.yaml"
    yaml_spec.parent.mkdir()
    yaml_spec.write_text(f"stac: {sample_catalog}\noutput: masks\nbbox: [1.0, 43.0, 2.0, 44.0]\n"
                         "cloud_cover: [5, 60]\nbackend: emulated\n")
    ys = load_spec(yaml_spec)
    assert ys.output == yaml_spec.parent / "masks" and ys.bbox == (1.0, 43.0, 2.0, 44.0)
    assert (ys.min_cloud, ys.max_cloud) == (5, 60) and ys.name == "job"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"stac": None}, ["'stac' is missing"]),
        ({"stac": "nowhere/catalog.json", "output": "o"}, ["'stac'", "does not exist"]),
        ({"output": None}, ["'output' is missing"]),
        ({"outptu": "o"}, ["unknown key", "'outptu'", "output"]),
        ({"datetime": "yesterday-ish"}, ["'datetime'", "last 10 days"]),
        ({"bbox": [10, 1, 5, 0]}, ["'bbox'", "south (1.0) must be below north (0.0)"]),
        ({"bbox": [10, 0, 10, 1]}, ["'bbox'", "no width"]),
        ({"limit": 0}, ["'limit'", ">= 1"]),
        ({"http_timeout": "soon"}, ["'http_timeout'", "CONNECT,READ"]),
        ({"http_retries": -2}, ["'http_retries'", "0-100"]),
        ({"max_cloud": "20"}, ["'max_cloud'", "number"]),
        ({"max_cloud": 120}, ["'max_cloud'", "between 0 and 100"]),
        ({"min_cloud": 50, "max_cloud": 10}, ["'min_cloud'", "swap"]),
        ({"cloud_cover": [0, 80], "max_cloud": 5}, ["'cloud_cover'", "one or the other"]),
        ({"backend": "gpu"}, ["'backend'", "onnxruntime"]),
        ({"model": "nope"}, ["'model'", "ukis-6b-l2a"]),
        ({"concurrency": 0}, ["'concurrency'", "between 1 and 256"]),
        ({"concurrency": 1.5}, ["'concurrency'", "integer"]),
        ({"retries": {"count": -1}}, ["'retries.count'"]),
        ({"retries": {"tries": 3}}, ["'retries'", "unknown key"]),
        ({"aoi": "missing.geojson"}, ["'aoi'", "does not exist"]),
        ({"push_to": "ftp://x"}, ["'push_to'", "https://"]),
        ({"scheduler": "localhost:8786"}, ["'scheduler'", "tcp://"]),
        ({"profile": "no-such-profile"}, ["'profile'", "unknown"]),
        ({"output": "s3://bucket/x"}, ["'output'", "not a URL"]),
    ],
)
def test_spec_errors_name_the_field(tmp_path, sample_catalog, raw, words):
    doc = {"stac": str(sample_catalog), "output": "out", **raw}
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        spec_from_dict(doc, base=tmp_path)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_spec_reports_every_problem_at_once(tmp_path, sample_catalog):
    doc = {"stac": str(sample_catalog), "output": "out", "max_cloud": 120, "concurrency": 0, "backend": "gpu",
           "outptu": "x", "retries": {"count": -1, "tries": 2}}
    with pytest.raises(ConfigError) as err:
        spec_from_dict(doc, base=tmp_path)
    msg = str(err.value)
    assert "6 problems" in msg, msg
    for w in ("'max_cloud' must be between 0 and 100", "'concurrency' must be between 1 and 256", "'backend' 'gpu'",
              "unknown key 'outptu'", "'retries.count' must be an integer 0-100", "'retries' has unknown key 'tries'"):
        assert w in msg, msg


def test_spec_search_is_the_shared_query(tmp_path, sample_catalog):
    """bbox across the antimeridian, relative windows and HTTP limits mean what they mean everywhere."""
    from cloudmask.stac import SearchQuery

    spec = spec_from_dict({"stac": str(sample_catalog), "output": "o", "bbox": "170,50,-170,60",
                           "datetime": "last 2 days", "cloud_cover": [0, 30], "limit": 2,
                           "http_timeout": "3,9", "http_retries": 1}, base=tmp_path)
    now = datetime(2024, 6, 20, 12, tzinfo=UTC)
    assert spec.query(now) == SearchQuery.build(bbox=(170, 50, -170, 60), datetime="2024-06-18T12:00:00Z/2024-06-20T12:00:00Z",
                                                min_cloud=0, max_cloud=30, limit=2)
    http = spec.http_policy()
    assert (http.connect_timeout, http.read_timeout, http.retry.count) == (3.0, 9.0, 1)


def test_cli_reports_bad_spec(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('stac = "x"\noutput = [1\n')
    res = cli_job("run", bad)
    assert res.exit_code == 2 and "not valid TOML" in res.output
    res = cli_job("status", tmp_path / "missing.toml")
    assert res.exit_code == 2 and "does not exist" in res.output


# ------------------------------------------------------------------------------------ push (STAC API)


def test_push_to_stac_api(tmp_path, sample_catalog, stac_api):
    import requests

    spec = write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated", push_to=stac_api.url,
                      public_url="https://data.example.org/masks")
    try:
        _push_and_check(spec, tmp_path / "out", stac_api.url)
    finally:  # the server is shared by the session: leave it as found
        for item in (tmp_path / "out" / "items").glob("*.json"):
            requests.delete(f"{stac_api.url}/collections/cloudmask/items/{item.stem}", timeout=30)
        requests.delete(f"{stac_api.url}/collections/cloudmask", timeout=30)
    assert requests.get(f"{stac_api.url}/collections/cloudmask", timeout=30).status_code == 404


def _push_and_check(spec: Path, out: Path, url: str) -> None:
    import requests

    res = cli_job("run", spec)
    assert res.exit_code == 0, res.output
    assert len(journal_events(out, "pushed")) == SCENES
    coll = requests.get(f"{url}/collections/cloudmask", timeout=30).json()
    assert coll["id"] == "cloudmask"
    feats = requests.get(f"{url}/collections/cloudmask/items", params={"limit": 50}, timeout=30).json()
    got = {f["id"]: f for f in feats["features"]}
    assert set(got) == {p.stem for p in (out / "items").glob("*.json")}
    for f in got.values():
        assert f["assets"]["mask"]["href"].startswith("https://data.example.org/masks/")
        assert f["assets"]["mask"]["file:checksum"].startswith("1220")
        assert f["properties"]["proj:code"] == "EPSG:32631"
    # incremental: nothing new to push; a re-made mask is pushed again (PUT over the existing item)
    res = cli_job("run", spec)
    assert res.exit_code == 0 and len(journal_events(out, "pushed")) == SCENES
    victim = masks(out)[0]
    victim.unlink()
    res = cli_job("run", spec)
    assert res.exit_code == 0, res.output
    assert len(journal_events(out, "pushed")) == SCENES + 1


def test_push_failure_is_reported_and_retried(tmp_path, sample_catalog):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = write_spec(tmp_path / "job.toml", sample_catalog, backend="emulated", push_to=f"http://127.0.0.1:{port}")
    res = cli_job("run", spec)
    assert res.exit_code == 8 and "could not be pushed" in res.output, res.output
    assert len(masks(tmp_path / "out")) == SCENES
    assert journal_events(tmp_path / "out", "push-failed")


def test_spec_missing_keys_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        spec_from_dict({"max_cloud": 300}, base=tmp_path)
    msg = str(err.value)
    assert "3 problems" in msg and "'stac' is missing" in msg and "'output' is missing" in msg, msg
    assert "'max_cloud' must be between 0 and 100" in msg, msg
