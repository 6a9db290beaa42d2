"""Faults a user meets, and what cloudmask does about them (docs/failures.md).

Each test fails without its fix: the reader used to segfault when one band failed while the others
were still reading; GDAL's block cache was 256 bytes; ``run`` stopped at the first bad scene without a
catalogue; a full disk gave a traceback and could leave a truncated mask; bad option values gave
tracebacks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from cloudmask.errors import ReadError
from cloudmask.gdal_config import DEFAULT_CACHE_BYTES, current_cache_bytes
from cloudmask.profiles import scene_spec
from cloudmask.reader import RasterSource, ReaderConfig

CLI = [sys.executable, "-m", "cloudmask.cli"]
SIX = ("blue", "green", "red", "nir", "swir16", "swir22")


@pytest.fixture(scope="module")
def bad_catalog(sample_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the three-scene sample catalogue whose second scene has a garbage green band.

    The file keeps its valid TIFF header (it opens) but its tiles are garbage (reads fail), the
    case that crashed the reader when other bands were still being read.
    """
    root = tmp_path_factory.mktemp("badcat") / "cat"
    shutil.copytree(sample_catalog.parent, root)
    items = sorted(pystac.Catalog.from_file(str(root / "catalog.json")).get_items(recursive=True),
                   key=lambda it: it.id)
    bad = items[1]
    href = Path(bad.assets["green"].get_absolute_href())
    data = href.read_bytes()
    href.write_bytes(data[:2000] + b"\x00garbage" * ((len(data) - 2000) // 8))
    return root / "catalog.json", bad.id


def _run(args: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _no_temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".*") if ".tmp" in p.name)


def _readable_tifs(out: Path) -> list[Path]:
    """Every ``.tif`` under ``out`` opens and decodes completely (raises otherwise)."""
    tifs = sorted(out.rglob("*.tif"))
    for t in tifs:
        with rasterio.open(t) as ds:
            ds.read()
    return tifs


# ------------------------------------------------------------------------------------- reader


def test_reader_survives_a_failing_band_20_times(bad_catalog: tuple[Path, str]) -> None:
    """One band fails while five others read; the source is closed at once. 20 rounds, no crash.

    Runs in a child process so that a segfault fails this test instead of killing the suite.
    """
    cat, bad_id = bad_catalog
    code = textwrap.dedent(f"""
        import pystac
        from cloudmask.errors import ReadError
        from cloudmask.profiles import scene_spec
        from cloudmask.reader import RasterSource, ReaderConfig
        items = pystac.Catalog.from_file({str(cat)!r}).get_items(recursive=True)
        spec = scene_spec(next(it for it in items if it.id == {bad_id!r}))
        errors = 0
        for _ in range(20):
            src = RasterSource(spec, {SIX!r}, spec.geobox(10.0), ReaderConfig(overviews=False))
            try:
                src.read_rows(0, spec.geobox(10.0).height)
            except ReadError:
                errors += 1
            src.close()
        print("errors", errors)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"exit {res.returncode} (-11/139 = segfault)\n{res.stderr[-2000:]}"
    assert "errors 20" in res.stdout


def test_closed_reader_refuses_reads_and_closes_handles_in_use(sample_items: list[pystac.Item]) -> None:
    spec = scene_spec(sample_items[0])
    src = RasterSource(spec, ("red",), spec.geobox(30.0))
    asset = src.assets[0]
    with src._handles.checkout(asset, None) as ds:  # a read in flight...
        src.close()  # ...while the scene is closed
        assert not ds.closed  # the handle in use stays open until it is returned
        assert ds.read(1, window=((0, 8), (0, 8))).shape == (8, 8)
    assert ds.closed  # closed on return
    with pytest.raises(ReadError, match="closed"):
        src.read_rows(0, 10)


def test_read_rows_waits_for_every_band_before_raising(bad_catalog: tuple[Path, str]) -> None:
    cat, bad_id = bad_catalog
    items = pystac.Catalog.from_file(str(cat)).get_items(recursive=True)
    spec = scene_spec(next(it for it in items if it.id == bad_id))
    src = RasterSource(spec, SIX, spec.geobox(10.0), ReaderConfig(overviews=False))
    try:
        with pytest.raises(ReadError, match="green"):
            src.read_rows(0, 300)
        assert not src._handles._out  # no dataset is checked out when the error arrives
    finally:
        src.close()


def test_gdal_block_cache_is_set_once_in_bytes(sample_items: list[pystac.Item]) -> None:
    spec = scene_spec(sample_items[0])
    with RasterSource(spec, SIX, spec.geobox(30.0)) as src:
        rows = src.read_rows(0, 50)
        assert current_cache_bytes() == DEFAULT_CACHE_BYTES  # 128 MiB, not 256 bytes, during reads
    assert np.isfinite(rows).any()
    assert current_cache_bytes() == DEFAULT_CACHE_BYTES  # and not reset by leaving anything


# ---------------------------------------------------------------------------- scene isolation


@pytest.mark.slow  # three job runs in subprocesses (~35 s on two busy cores)
def test_job_with_one_bad_scene_exits_8_every_time(bad_catalog: tuple[Path, str], tmp_path: Path) -> None:
    cat, bad_id = bad_catalog
    out = tmp_path / "masks"
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "bad"\nstac = "{cat}"\noutput = "{out}"\nconcurrency = 2\n[retries]\ncount = 0\n')
    for attempt in range(8):
        shutil.rmtree(out, ignore_errors=True)
        res = _run(["job", "run", str(spec)])
        assert res.returncode == 8, f"attempt {attempt}: exit {res.returncode}\n{res.stderr[-2000:]}"
        masks = _readable_tifs(out)
        assert len([m for m in masks if m.name.endswith("_cloudmask.tif")]) == 2
        assert bad_id not in " ".join(m.name for m in masks)
        assert _no_temporaries(out) == []


def test_run_masks_the_good_scenes_and_catalogues_them(bad_catalog: tuple[Path, str], tmp_path: Path) -> None:
    cat, bad_id = bad_catalog
    out = tmp_path / "run"
    res = _run(["run", "--stac", str(cat), "--out", str(out), "--no-quicklook", "--no-progress"])
    assert res.returncode == 8, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 of 3 scenes failed")
    masks = sorted(out.glob("*_cloudmask.tif"))
    assert len(masks) == 2 and not any(bad_id in m.name for m in masks)
    collection = pystac.Collection.from_file(str(out / "collection.json"))
    ids = sorted(it.id for it in collection.get_items(recursive=True))
    assert len(ids) == 2 and bad_id not in ids
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (2, 1)
    failed = next(r for r in summary["rows"] if r["status"] == "failed")
    assert failed["scene"] == bad_id and "green" in failed["error"]

    # --skip-existing keeps the two finished masks untouched and tries the bad scene again
    before = {m.name: m.stat().st_mtime_ns for m in masks}
    again = _run(["run", "--stac", str(cat), "--out", str(out), "--no-quicklook", "--no-progress",
                  "--skip-existing"])
    assert again.returncode == 8
    assert {m.name: m.stat().st_mtime_ns for m in out.glob("*_cloudmask.tif")} == before
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert sorted(r["status"] for r in rows) == ["failed", "skipped", "skipped"]


# ---------------------------------------------------------------------------------- disk full


def _tmpfs(path: Path, kib: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                         capture_output=True, text=True)
    return res.returncode == 0


@pytest.mark.parametrize(("command", "kib"), [("run", 8), ("run", 16), ("run", 32), ("run", 64),
                                              ("job", 8), ("job", 24), ("job", 64)])
def test_full_disk_says_so_and_leaves_no_broken_mask(sample_catalog: Path, tmp_path: Path, command: str,
                                                     kib: int) -> None:
    out = tmp_path / "tiny"
    if not _tmpfs(out, kib):
        if os.environ.get("CLOUDMASK_REQUIRE_TMPFS") == "1":
            pytest.fail("cannot mount a tmpfs (CLOUDMASK_REQUIRE_TMPFS=1); run as root")
        pytest.skip("mounting a small tmpfs needs root (the disk-full case)")
    try:
        if command == "run":
            res = _run(["run", "--stac", str(sample_catalog), "--out", str(out), "--no-progress"])
        else:
            spec = tmp_path / "job.toml"
            spec.write_text(f'name = "tiny"\nstac = "{sample_catalog}"\noutput = "{out}"\n[retries]\ncount = 0\n')
            res = _run(["job", "run", str(spec)])
        assert res.returncode == 7, f"exit {res.returncode}\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "no space left" in last
        _readable_tifs(out)  # nothing unreadable at a final path
        assert _no_temporaries(out) == []
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_job_sweeps_temporaries_of_killed_runs_including_gdal_overviews(sample_catalog: Path,
                                                                        tmp_path: Path) -> None:
    """What ``kill -9`` leaves while GDAL builds overviews (``*.ovr.tmp``) is removed by the next run."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "masks"
    (out / "items").mkdir(parents=True)
    left = [
        out / f".S_cloudmask.tif.cog-{dead.pid}-0123abcd.tmp.tif.ovr.tmp",
        out / f".S_cloudmask.tif.cog-{dead.pid}-0123abcd.tmp.tif",
        out / f".S_cloudmask.tif.aux.xml.{dead.pid}.tmp",
        out / "items" / f".S.json.{dead.pid}-0123abcd.tmp",
    ]
    for p in left:
        p.write_bytes(b"partial")
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "sweep"\nstac = "{sample_catalog}"\noutput = "{out}"\nlimit = 1\n')
    res = _run(["job", "run", str(spec)])
    assert res.returncode == 0, res.stderr[-2000:]
    assert [p.name for p in left if p.exists()] == []
    assert _no_temporaries(out) == []


@pytest.mark.slow  # > 2 s in-process: CI runs it, `make test-fast` does not
def test_engine_stops_cleanly_when_a_device_fails_20_times(sample_items: list[pystac.Item]) -> None:
    """A device that fails mid-scene while the reader reads ahead on its own threads: every round ends
    with the device's error (no hang, no crash, no half-read strip closed under a read)."""
    from cloudmask.engine import ArraySink, StreamConfig, stream_scene
    from cloudmask.errors import RuntimeBackendError
    from cloudmask.models import load_model
    from cloudmask.runtime import make_runners

    card = load_model("ukis-6b-l2a")
    spec = scene_spec(sample_items[0])

    class Failing:
        def __init__(self, inner, after):
            self.inner, self.after, self.calls = inner, after, 0
            self.input_shape = inner.input_shape

        def run(self, batch):
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeBackendError("device lost")
            return self.inner.run(batch)

        def close(self):
            self.inner.close()

    for k in range(20):
        runners = [Failing(r, after=k % 3) for r in make_runners(card, "emulated", instances=2)]
        src = RasterSource(spec, card.bands, spec.geobox(10.0))
        h, w = src.shape
        try:
            with pytest.raises(RuntimeBackendError, match="device lost"):
                stream_scene(src, card, runners, ArraySink(h, w), StreamConfig(queue_batches=2))
        finally:
            src.close()
        assert not src._handles._out  # nothing still checked out after the engine returned


def test_skip_existing_keeps_only_masks_of_the_same_model_and_classes(sample_items: list[pystac.Item],
                                                                        tmp_path: Path) -> None:
    from cloudmask.api import mask_scene
    from cloudmask.batch import existing_output

    spec = scene_spec(sample_items[0])
    mask_scene(spec, tmp_path, "ukis-6b-l2a", quicklook=False)
    three = "0=clear,1=cloud,2=shadow,255=nodata"
    kept = existing_output(tmp_path, spec, "ukis-6b-l2a", three)
    assert kept is not None and kept["status"] == "skipped" and Path(kept["mask"]).is_file()
    assert existing_output(tmp_path, spec, "ukis-4b-l2a", three) is None  # another model
    assert existing_output(tmp_path, spec, "ukis-6b-l2a", "0=clear,1=cloud,2=shadow,3=thin_cloud,255=nodata") is None
    mask = Path(kept["mask"])
    mask.write_bytes(mask.read_bytes()[:-10])  # damaged since: not kept
    assert existing_output(tmp_path, spec, "ukis-6b-l2a", three) is None
