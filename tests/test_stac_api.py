"""search() against a real STAC API: stac-fastapi-pgstac over PostgreSQL + pgstac (tests/stac_api.py),
and that test server's own hygiene: it is stopped on any exit of the test process.

The server holds every real item of ../shared/data/stac; expected results are computed by hand
(shapely over the loaded item dicts), not with cloudmask's own filters. Faults (timeouts, bad pages)
are tested against a scripted local server in test_stac_http.py.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box, shape

from cloudmask.errors import CatalogError, CatalogNotFoundError, CatalogUnreachableError
from cloudmask.profiles import scene_spec
from cloudmask.retry import RetryPolicy
from cloudmask.stac import HttpPolicy, search

try:
    from . import stac_api as fixture
    from .stac_api import simple_collection
except ImportError:  # tests/ not a package
    import stac_api as fixture  # type: ignore[no-redef]
    from stac_api import simple_collection  # type: ignore[no-redef]



def _all(real: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [d for items in real.values() for d in items]


def _hand(
    items: list[dict[str, Any]], *, geom: Any = None, start: str | None = None, end: str | None = None,
    max_cloud: float | None = None, collections: tuple[str, ...] | None = None,
) -> set[tuple[str, str]]:
    keep = set()
    for d in items:
        p = d["properties"]
        if collections is not None and d["collection"] not in collections:
            continue
        if max_cloud is not None and not p.get("eo:cloud_cover", 101) <= max_cloud:
            continue
        if start is not None and p["datetime"] < start:
            continue
        if end is not None and p["datetime"] > end:
            continue
        if geom is not None and not shape(d["geometry"]).intersects(geom):
            continue
        keep.add((d["collection"], d["id"]))
    return keep


CASES = {
    # name: (bbox, datetime, expected-datetime-range for the hand filter, max_cloud)
    "world-all-time": ((-180.0, -90.0, 180.0, 90.0), None, (None, None), 20),
    "brazil-one-day": ((-41.0, -6.0, -38.0, -4.0), "2025-07-31", ("2025-07-31", "2025-07-31T23:59:59.999Z"), 20),
    "brazil-30": ((-41.0, -6.0, -38.0, -4.0), "2025-07-01/2025-08-31", ("2025-07-01", "2025-08-31T23:59:59.999Z"), 30),
    "north-2019-2023": ((-180.0, 50.0, 180.0, 85.0), "2019-01-01/2023-12-31", ("2019-01-01", "2023-12-31T23:59:59.999Z"), 20),
    "kamchatka-cloudy": ((170.0, 55.0, 180.0, 65.0), "2019-01-01", ("2019-01-01", "2019-01-01T23:59:59.999Z"), 55),
}


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("case", sorted(CASES))
def test_api_search_matches_hand_filter(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]], case: str) -> None:
    bbox, dt, (start, end), max_cloud = CASES[case]
    items = _all(stac_api_real)
    want = _hand(items, geom=box(*bbox), start=start, end=end, max_cloud=max_cloud,
                 collections=tuple(stac_api_real))
    found = search(stac_api.url, bbox=bbox, datetime=dt, max_cloud=max_cloud)
    got = {(i.collection_id, i.id) for i in found}
    assert got == want
    assert len(found) == len(want)
    assert all(i.properties["eo:cloud_cover"] <= max_cloud for i in found)
    if case == "brazil-one-day":
        assert len(want) >= 2  # the case is not vacuous


@pytest.mark.slow
@pytest.mark.shared
def test_api_collection_aoi_sortby_limit(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    items = stac_api_real["sentinel-2-l2a"]
    aoi = box(168.0, 57.0, 175.0, 60.0)  # Kamchatka: PC tiles 59V*/60V*
    want = _hand(items, geom=aoi, collections=("sentinel-2-l2a",))
    found = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, sortby="-eo:cloud_cover")
    assert {(i.collection_id, i.id) for i in found} == want
    ccs = [i.properties["eo:cloud_cover"] for i in found]
    assert ccs == sorted(ccs, reverse=True)
    top = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, sortby="-eo:cloud_cover", limit=2)
    assert [i.id for i in top] == [i.id for i in found[:2]]
    # min and max cloud together (a CQL2 "and")
    mid = search(stac_api.url, collection="sentinel-2-l2a", aoi=aoi.wkt, min_cloud=50, max_cloud=57)
    assert {i.id for i in mid} == {
        d["id"] for d in items if (d["collection"], d["id"]) in want and 50 <= d["properties"]["eo:cloud_cover"] <= 57
    }
    # items from the API map to scenes
    spec = scene_spec(found[0])
    assert spec.profile == "planetary-computer" and spec.bands["red"].offset == 0.0


@pytest.mark.slow
@pytest.mark.shared
def test_api_dedupes_reprocessed(stac_api: Any, stac_api_real: dict[str, list[dict[str, Any]]]) -> None:
    src = [d for d in stac_api_real["sentinel-2-l2a"] if "T59V" in d["id"]][:3]
    reprocessed = []
    for d in src[:2]:
        r = copy.deepcopy(d)
        r["id"] = d["id"].rsplit("_", 1)[0] + "_20240101T000000"
        r["properties"]["s2:processing_baseline"] = "05.10"
        r["properties"]["s2:generation_time"] = "2024-01-01T00:00:00Z"
        reprocessed.append(r)
    coll = simple_collection("reprocessed-test", src + reprocessed)
    stac_api.load(coll, src + reprocessed)
    found = search(stac_api.url, collection="reprocessed-test")
    assert {i.id for i in found} == {reprocessed[0]["id"], reprocessed[1]["id"], src[2]["id"]}
    assert len(search(stac_api.url, collection="reprocessed-test", limit=2)) == 2


@pytest.mark.slow
def test_api_http_404_is_a_catalog_error_not_unreachable(stac_api: Any) -> None:
    with pytest.raises(CatalogError) as err:
        search(stac_api.url + "/no/such/api", http=HttpPolicy(2.0, 2.0, RetryPolicy(1, 0.01, 0.01)))
    assert not isinstance(err.value, CatalogUnreachableError | CatalogNotFoundError)


# ------------------------------------------------------------------------ the fixture stops its servers

_HOLDER = """
import json, sys, time
sys.path.insert(0, {tests!r})
import stac_api
stac_api.STATE_DIR = __import__("pathlib").Path({state!r})
with stac_api.start_stac_api() as server:
    doc = json.loads(next(stac_api.STATE_DIR.glob("*.json")).read_text())
    print(json.dumps(doc), flush=True)
    time.sleep(600)
"""


def _start_holder(state: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """A test process that starts the STAC API and then just sits there; its pid file's content."""
    code = _HOLDER.format(tests=str(Path(__file__).parent), state=str(state))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        if "StacApiUnavailable" in err and not fixture.require_stac_api():
            pytest.skip("STAC API test server unavailable: " + fixture.SETUP_HINT)
        pytest.fail(f"the holder process did not start the server: {err[-3000:]}")
    return proc, json.loads(line)


def _gone(doc: dict[str, Any]) -> bool:
    return all(fixture._start_time(p["pid"]) != p["started"] for p in doc["procs"].values())


def _wait_gone(doc: dict[str, Any], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(doc):
            return True
        time.sleep(0.2)
    return _gone(doc)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP"])
def test_servers_stop_when_the_test_process_is_terminated(tmp_path: Path, how: str) -> None:
    proc, doc = _start_holder(tmp_path)
    try:
        assert set(doc["procs"]) == {"postgres", "uvicorn"} and not _gone(doc)
        os.kill(proc.pid, getattr(signal, how))
        proc.wait(timeout=60)
        assert proc.returncode == -getattr(signal, how)  # it still dies of the signal
        assert _wait_gone(doc), doc
        assert not Path(doc["workdir"]).exists()
        assert list(tmp_path.glob("*.json")) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in doc["procs"].values():
            fixture._kill_group(p["pid"], p["started"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_servers_of_a_killed_test_process_are_swept(tmp_path: Path) -> None:
    """kill -9 runs no handler: the kernel's parent-death signal or the next start's sweep stops them."""
    proc, doc = _start_holder(tmp_path)
    try:
        proc.kill()
        proc.wait(timeout=30)
        swept = fixture.sweep_stale(tmp_path)
        assert [p.name for p in swept] == [f"{proc.pid}-{Path(doc['workdir']).name}.json"]
        assert _wait_gone(doc), doc
        assert not Path(doc["workdir"]).exists()
        assert fixture.sweep_stale(tmp_path) == []
    finally:
        for p in doc["procs"].values():
            fixture._kill_group(p["pid"], p["started"])


def test_sweep_leaves_live_runs_and_reused_pids_alone(tmp_path: Path) -> None:
    """A pid file of a live process is kept; a dead owner's file whose pids now belong to others (start
    times differ) is removed without killing anything."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        started = fixture._start_time(sleeper.pid)
        live = {"owner": os.getpid(), "owner_started": fixture._start_time(os.getpid()), "workdir": "",
                "procs": {"uvicorn": {"pid": sleeper.pid, "started": started}}}
        (tmp_path / "live.json").write_text(json.dumps(live))
        dead_workdir = tmp_path / "dead-workdir"
        dead_workdir.mkdir()
        dead = {"owner": sleeper.pid, "owner_started": -1, "workdir": str(dead_workdir),
                "procs": {"uvicorn": {"pid": sleeper.pid, "started": -1}}}  # pid reused by the sleeper
        (tmp_path / "dead.json").write_text(json.dumps(dead))
        assert [p.name for p in fixture.sweep_stale(tmp_path)] == ["dead.json"]
        assert sleeper.poll() is None  # not killed: its start time is not the recorded one
        assert not dead_workdir.exists() and (tmp_path / "live.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sweep_stops_what_a_dead_owner_left_running(tmp_path: Path) -> None:
    """When the kernel's parent-death signal did not reach them, the sweep kills the recorded groups."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    owner = subprocess.Popen([sys.executable, "-c", "pass"])
    owner.wait()  # a test process that is gone
    try:
        doc = {"owner": owner.pid, "owner_started": 1, "workdir": str(tmp_path / "w"),
               "procs": {"postgres": {"pid": child.pid, "started": fixture._start_time(child.pid)}}}
        (tmp_path / "w").mkdir()
        (tmp_path / "stale.json").write_text(json.dumps(doc))
        assert [p.name for p in fixture.sweep_stale(tmp_path)] == ["stale.json"]
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert not (tmp_path / "w").exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
