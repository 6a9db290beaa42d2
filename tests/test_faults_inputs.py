"""Hostile input and bad days (issue 22, items 1-8): hangs, memory, silently wrong masks, data loss.

Each test failed on the code before its fix: a silent HTTP server hung ``run``; a huge ``proj:shape``
was read as a huge grid; a catalogue link cycle was a RecursionError traceback; a model giving NaN
made a "100 % clear" mask; ``predict`` read DN as reflectance; a changed job spec kept every old
mask; a full disk while writing quicklooks left scenes "done" without them; ``--out`` equal to the
input catalogue's folder overwrote its ``catalog.json``.
"""

from __future__ import annotations

import errno
import json
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest

from cloudmask.errors import CatalogError, ConfigError
from cloudmask.profiles import scene_spec

CLI = [sys.executable, "-m", "cloudmask.cli"]


def _run(args: list[str], timeout: float = 300, limit_gb: float | None = None) -> subprocess.CompletedProcess[str]:
    def cap() -> None:  # an address-space cap: a runaway allocation fails instead of eating the machine
        if limit_gb is not None:
            size = int(limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)


def _cli(args: list[str]) -> tuple[int, str]:
    """``cloudmask ARGS`` in this process (faster than a subprocess): exit code and stderr."""
    from click.testing import CliRunner

    from cloudmask.cli import main

    res = CliRunner().invoke(main, args)
    return res.exit_code, res.stderr


def _copy_catalog(sample_catalog: Path, dest: Path) -> tuple[Path, list[Path]]:
    """A copy of the sample catalogue: its ``catalog.json`` and item files sorted by item id."""
    shutil.copytree(sample_catalog.parent, dest)
    items = sorted(dest.rglob("S2*_L2A.json"), key=lambda p: p.stem)
    return dest / "catalog.json", items


def _edit_item(path: Path, change: Any) -> str:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return str(doc["id"])


def _summary_rows(out: Path) -> dict[str, dict[str, Any]]:
    return {r["scene"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}


# ------------------------------------------------------------------------ 1. an HTTP server that never answers


@pytest.fixture()
def silent_server() -> Iterator[tuple[str, list[socket.socket]]]:
    """``http://127.0.0.1:PORT`` of a server that accepts every connection and never sends a byte."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", conns
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_silent_http_asset_fails_its_scene_in_bounded_time(sample_catalog: Path, tmp_path: Path,
                                                           silent_server: tuple[str, list[socket.socket]]) -> None:
    url, conns = silent_server
    cat, items = _copy_catalog(sample_catalog, tmp_path / "cat")
    silent = _edit_item(items[1], lambda d: d["assets"]["red"].update(href=f"{url}/B04.tif"))
    out = tmp_path / "out"
    t0 = time.monotonic()
    try:
        res = _run(["run", "--stac", str(cat), "--out", str(out), "--no-quicklook", "--no-progress",
                    "--http-timeout", "1,2", "--http-retries", "0"], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("run hung on an HTTP server that never answers (no GDAL HTTP timeout)")
    seconds = time.monotonic() - t0
    assert conns, "the scene's band was never requested from the silent server"
    assert res.returncode == 8, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    rows = _summary_rows(out)
    assert rows[silent]["status"] == "failed" and "red" in rows[silent]["error"]
    assert "--http-timeout" in rows[silent]["error"]  # the message says which limit applied
    assert sorted(r["status"] for r in rows.values()) == ["done", "done", "failed"]  # the others went on
    assert seconds < 90


def test_http_timeout_reaches_gdal_from_cli_job_and_api(sample_items: list[pystac.Item]) -> None:
    """``--http-timeout``/the job key/the API keyword become GDAL's HTTP limits on remote opens."""
    from dataclasses import replace

    from cloudmask.api import _with_http
    from cloudmask.jobs.spec import spec_from_dict
    from cloudmask.jobs.task import TaskSettings
    from cloudmask.reader import RasterSource, ReaderConfig
    from cloudmask.stac import HttpPolicy

    http = HttpPolicy().with_overrides("3,7", 1)
    env = ReaderConfig(http=http).http_env()
    assert env["GDAL_HTTP_CONNECTTIMEOUT"] == "3" and env["GDAL_HTTP_LOW_SPEED_TIME"] == "7"
    assert env["GDAL_HTTP_MAX_RETRY"] == "1" and int(env["GDAL_HTTP_TIMEOUT"]) <= 3 + 3 * 7
    assert _with_http(None, "3,7", 1) == ReaderConfig(http=http)
    job = spec_from_dict({"stac": "earth-search", "output": "/tmp/x", "http_timeout": "3,7", "http_retries": 1})
    assert TaskSettings.from_spec(job).options.http == http
    spec = scene_spec(sample_items[0])
    remote = replace(spec, bands={k: replace(b, href="https://example.invalid/" + b.band) for k, b in spec.bands.items()})
    src = RasterSource(remote, ("red",), spec.geobox(30.0), ReaderConfig(http=http))
    try:
        assert src._handles.remote["GDAL_HTTP_LOW_SPEED_TIME"] == "7"
    finally:
        src.close()


# --------------------------------------------------------------------- 2. a grid the files cannot fill


def _claim_shape(n: int) -> Any:
    def change(doc: dict[str, Any]) -> None:
        for asset in doc["assets"].values():
            if "proj:shape" in asset:
                asset["proj:shape"] = [n, n]
    return change


def test_claimed_grid_bigger_than_its_files_is_refused_before_reading(sample_catalog: Path, tmp_path: Path) -> None:
    cat, items = _copy_catalog(sample_catalog, tmp_path / "cat")
    huge = _edit_item(items[0], _claim_shape(5_000_000))  # 5e6 x 5e6 px over 600 px files
    wide = _edit_item(items[2], _claim_shape(6_000))  # 10x the files: within the memory bound, beyond the files
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = _run(["run", "--stac", str(cat), "--out", str(out), "--no-quicklook", "--no-progress"],
               timeout=180, limit_gb=6)
    assert res.returncode == 8, res.stderr[-2000:]
    assert time.monotonic() - t0 < 120
    rows = _summary_rows(out)
    assert rows[huge]["status"] == "failed" and "memory bound" in rows[huge]["error"]
    assert "proj:shape" in rows[huge]["error"]
    err = rows[wide]["error"]
    assert rows[wide]["status"] == "failed" and "claims a grid of 2000 x 2000 pixels" in err
    assert "cover only 6000 x 6000 m" in err  # names both: the claimed grid and the files
    assert sorted(r["status"] for r in rows.values()) == ["done", "failed", "failed"]
    assert not list(out.glob(f"{wide}*.tif")) and not list(out.glob(f"{huge}*.tif"))

    from cloudmask.api import open_scene
    from cloudmask.errors import GridError

    with pytest.raises(GridError, match="memory bound"):  # not a task graph of millions of chunks
        open_scene(str(items[0]))


# ------------------------------------------------------------------------------------ 3. a link cycle


@pytest.mark.parametrize("loop", ["parent", "self"])
def test_catalogue_link_cycle_is_an_error_exit_4(tmp_path: Path, loop: str) -> None:
    from cloudmask.stac import search

    root = tmp_path / "cat"
    (root / "sub").mkdir(parents=True)
    back = "../catalog.json" if loop == "parent" else "./catalog.json"
    (root / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "root", "description": "root",
        "links": [{"rel": "root", "href": "./catalog.json"}, {"rel": "child", "href": "./sub/catalog.json"}]}))
    (root / "sub" / "catalog.json").write_text(json.dumps({
        "type": "Catalog", "stac_version": "1.0.0", "id": "sub", "description": "sub",
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"},
                  {"rel": "child", "href": back}]}))
    with pytest.raises(CatalogError, match="link cycle"):
        search(str(root / "catalog.json"))
    code, err = _cli(["search", "--stac", str(root / "catalog.json")])
    assert code == 4, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: link cycle in STAC catalogue")


def test_a_child_reached_twice_is_not_a_cycle(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.stac import search

    cat, _ = _copy_catalog(sample_catalog, tmp_path / "cat")
    doc = json.loads(cat.read_text())
    child = next(lk for lk in doc["links"] if lk["rel"] == "child")
    doc["links"].append(dict(child))  # the same child linked twice: walked once, no error
    cat.write_text(json.dumps(doc))
    assert len(search(str(cat))) == 3


# ---------------------------------------------------------------------------- 4. a model giving NaN


def _nan_model(tmp_path: Path) -> Path:
    """A 4-band 32-px segmentation model whose every score is NaN (a 1x1 conv times NaN)."""
    import onnx
    import yaml
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 4, 1, 1], [0.1] * 12)
    nan = helper.make_tensor("nan", TensorProto.FLOAT, [1], [float("nan")])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "nan"], ["y"])], "nan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])], [w, nan],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "nan.onnx"))
    card = {"name": "nan-model", "onnx": "nan.onnx", "bands": ["blue", "green", "red", "nir"],
            "product_level": "l2a", "resolution": 30, "normalisation": {"type": "scale", "multiply": 1},
            "patch_size": 32, "classes": ["clear", "cloud", "shadow"]}
    (tmp_path / "nan.yaml").write_text(yaml.safe_dump(card))
    return tmp_path / "nan.yaml"


def test_model_giving_nan_fails_the_scene_never_clear(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.errors import RuntimeBackendError
    from cloudmask.inference import predict_array

    model = _nan_model(tmp_path)
    out = tmp_path / "out"
    code, err = _cli(["run", "--stac", str(sample_catalog), "--out", str(out), "--model", str(model),
                      "--no-quicklook", "--no-progress", "--limit", "1"])
    for item in (out / "items").glob("*.json") if (out / "items").is_dir() else []:
        assert json.loads(item.read_text())["properties"].get("eo:cloud_cover") != 0.0, "a NaN model made 'clear'"
    assert code == 8, err[-2000:]
    (row,) = _summary_rows(out).values()
    assert row["status"] == "failed" and "NaN" in row["error"] and "nan-model" in row["error"]
    assert not list(out.glob("*_cloudmask.tif"))  # no "clear" mask
    with pytest.raises(RuntimeBackendError, match="non-finite"):  # the API too (NonFiniteOutputError)
        predict_array(np.full((4, 64, 64), 0.2, np.float32), str(model))


# --------------------------------------------------------------------- 5. predict given digital numbers


def _reflectance(sample_items: list[pystac.Item]) -> np.ndarray:
    """Scene 1 of the sample at 30 m as ``(H, W, 6)`` reflectance (the ukis-6b band order)."""
    from cloudmask.models import load_model
    from cloudmask.reader import RasterSource

    spec = scene_spec(sample_items[0])
    card = load_model("ukis-6b-l2a")
    with RasterSource(spec, card.bands, spec.geobox(30.0)) as src:
        return np.moveaxis(src.read_rows(0, src.shape[0]), 0, -1)


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_predict_reads_integers_as_dn_and_refuses_what_cannot_be_reflectance(sample_items: list[pystac.Item]) -> None:
    import cloudmask

    refl = np.nan_to_num(_reflectance(sample_items), nan=0.0)
    want = cloudmask.predict(refl, "ukis-6b-l2a")
    assert (want == 1).mean() > 0.05  # the scene has cloud

    dn = np.clip(np.rint(refl / 1e-4), 1, 65535).astype(np.uint16)
    got = cloudmask.predict(dn, "ukis-6b-l2a")  # DN * 1e-4 (S2), not "100 % clear"
    assert (got == want).mean() > 0.99

    with pytest.raises(ConfigError, match=r"cannot be reflectance.*scale=1e-4"):
        cloudmask.predict(dn.astype(np.float32), "ukis-6b-l2a")  # DN as floats: refused with the fix
    same = cloudmask.predict(dn.astype(np.float32), "ukis-6b-l2a", scale=1e-4)
    assert (same == want).mean() > 0.99

    hot = refl.copy()
    hot[:10, :10, 2] = np.inf  # +inf is no data, never clear
    marked = cloudmask.predict(hot, "ukis-6b-l2a")
    assert (marked[:10, :10] == 255).all()


def test_predict_xarray_inf_is_nodata(sample_items: list[pystac.Item]) -> None:
    import xarray as xr

    import cloudmask

    refl = np.nan_to_num(_reflectance(sample_items), nan=0.0)
    refl[:5, :5, 0] = np.inf
    da = xr.DataArray(np.moveaxis(refl, -1, 0), dims=("band", "y", "x"),
                      coords={"band": ["blue", "green", "red", "nir", "swir16", "swir22"]})
    mask = cloudmask.predict(da, "ukis-6b-l2a")
    assert (mask.values[:5, :5] == 255).all()
    with pytest.raises(ConfigError, match="cannot be reflectance"):
        cloudmask.predict(da.where(np.isfinite(da), 0) * 1e4, "ukis-6b-l2a")


# ------------------------------------------------------------- 6. a changed job spec remasks (one done rule)


def _job(tmp_path: Path, stac: Path, **kw: Any) -> Any:
    from cloudmask.jobs import spec_from_dict

    return spec_from_dict({"name": "j", "stac": str(stac), "output": str(tmp_path / "out"), "limit": 1,
                           "retries": {"count": 0, "backoff": 0.05}, **kw})


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_changed_job_spec_remasks_same_spec_keeps(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.jobs import run_job
    from cloudmask.jobs.status import job_status

    first = run_job(_job(tmp_path, sample_catalog))
    assert len(first.processed) == 1
    again = run_job(_job(tmp_path, sample_catalog))
    assert again.skipped == 1 and not again.processed  # same spec: kept
    for change in ({"resolution": 60}, {"postprocess": {"min_region": 20}}, {"probabilities": True},
                   {"model": "ukis-4b-l2a"}):
        status = job_status(_job(tmp_path, sample_catalog, **change))
        assert not status.done and len(status.pending) == 1  # `job status` uses the same rule
        report = run_job(_job(tmp_path, sample_catalog, **change))
        assert report.skipped == 0 and len(report.processed) == 1, f"{change}: old mask kept"
        assert run_job(_job(tmp_path, sample_catalog, **change)).skipped == 1  # and kept after that


def test_skip_existing_remasks_when_post_processing_changes(sample_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    base = ["run", "--stac", str(sample_catalog), "--out", str(out), "--no-quicklook", "--no-progress", "--limit", "1"]
    assert _cli(base)[0] == 0
    assert _cli([*base, "--skip-existing"])[0] == 0
    assert [r["status"] for r in _summary_rows(out).values()] == ["skipped"]
    code, err = _cli([*base, "--skip-existing", "--min-region", "20"])
    assert code == 0, err[-2000:]
    assert [r["status"] for r in _summary_rows(out).values()] == ["done"]  # other settings: masked again
    item = json.loads(next((out / "items").glob("*.json")).read_text())
    assert item["properties"]["cloudmask:postprocess"]["min_region"] == 20
    assert len(item["properties"]["cloudmask:recipe"]) == 16


# --------------------------------------------------------- 7. done only when every asked-for output exists


def test_job_full_disk_on_quicklook_is_not_done_and_next_run_makes_it(sample_catalog: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudmask import quicklook
    from cloudmask.errors import WriteError
    from cloudmask.jobs import run_job

    if not quicklook.available():
        pytest.skip("quicklooks need matplotlib")
    spec = _job(tmp_path, sample_catalog, quicklook=True)
    out = Path(spec.output)

    def full(*args: Any, **kw: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(quicklook, "save_quicklook", full)
        with pytest.raises(WriteError, match="no space left"):
            run_job(spec)
    assert not list(out.glob("*_quicklook.png"))
    report = run_job(spec)  # the disk has room again
    assert report.skipped == 0 and len(report.processed) == 1
    (item,) = (out / "items").glob("*.json")
    assets = json.loads(item.read_text())["assets"]
    assert "quicklook" in assets and (out / Path(assets["quicklook"]["href"]).name).is_file()


def test_done_rule_requires_every_asked_output(sample_catalog: Path, tmp_path: Path) -> None:
    from cloudmask.jobs import check_done, run_job

    spec = _job(tmp_path, sample_catalog, quicklook=True)
    run_job(spec)
    out = Path(spec.output)
    (item,) = (out / "items").glob("*.json")
    scene = json.loads(item.read_text())["properties"]["cloudmask:source_id"]
    assert check_done(out, scene, outputs=("quicklook",)).done
    next(out.glob("*_quicklook.png")).unlink()
    check = check_done(out, scene, outputs=("quicklook",))
    assert not check.done and "quicklook" in check.reason
    assert check_done(out, scene).done  # the mask itself is fine
    assert not check_done(out, scene, outputs=("probabilities",)).done


# ------------------------------------------------------------ 8. --out holding the input catalogue


def test_out_holding_the_input_catalogue_is_refused(sample_catalog: Path, tmp_path: Path) -> None:
    cat, _ = _copy_catalog(sample_catalog, tmp_path / "cat")
    before = cat.read_bytes()
    for stac in (cat, cat.parent):
        code, err = _cli(["run", "--stac", str(stac), "--out", str(cat.parent), "--no-progress", "--limit", "1"])
        assert code == 2, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: --out") and "holds the input catalogue" in last
    job = tmp_path / "job.toml"
    job.write_text(f'stac = "{cat}"\noutput = "{cat.parent}"\n')
    code, err = _cli(["job", "run", str(job)])
    assert code == 2, err[-2000:]
    assert "holds the input catalogue" in err
    assert cat.read_bytes() == before
    assert not (cat.parent / "items").exists() and not (cat.parent / "collection.json").exists()
