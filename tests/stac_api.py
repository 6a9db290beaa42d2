"""A real STAC API for tests: stac-fastapi-pgstac over a throwaway PostgreSQL + pgstac on 127.0.0.1.

:func:`start_stac_api` (wrapped by the session fixture ``stac_api`` in ``conftest.py``):

1. ``initdb`` a cluster in a fresh temporary folder (as the ``postgres`` system user when running as
   root, since PostgreSQL refuses to run as root; trust auth, fsync off),
2. starts ``postgres`` on a free 127.0.0.1 port (its socket in the same folder),
3. ``pypgstac migrate`` (installs PostGIS and the pgstac schema),
4. starts ``uvicorn stac_fastapi.pgstac.app:create_app --factory`` on another free port (settings
   through ``PGHOST``/``PGPORT``/``PGUSER``/``PGPASSWORD``/``PGDATABASE``) and waits for ``/``,
5. yields a :class:`StacApi` with ``.url`` and ``.load(collection, items)``; stops both and removes
   the folder afterwards.

Both servers are stopped on any exit of the test process: the context manager's ``finally``, an
``atexit`` hook and SIGTERM/SIGHUP handlers (for ``kill``, a closed terminal, CI cancelling a job),
and the kernel (``PR_SET_PDEATHSIG``: uvicorn and the postmaster get SIGTERM/SIGQUIT when their
parent dies, even by SIGKILL). Each running server is recorded in a pid file under
``$TMPDIR/cloudmask-stacapi/``; the next start sweeps the files of dead test processes (stopping what
they started, checked by process start time so a reused pid is never hit, and removing their
folders). ``python tests/stac_api.py sweep`` does the same by hand.

Missing PostgreSQL/PostGIS/stac-fastapi-pgstac make the fixture *skip* with the reason and the
setup command, unless ``CLOUDMASK_REQUIRE_STAC_API=1`` (CI), where it fails instead.
Install everything with ``scripts/stac-api-setup.sh`` (in the active venv).
"""

from __future__ import annotations

import contextlib
import copy
import glob
import importlib.util
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SETUP_HINT = "run `scripts/stac-api-setup.sh` in the active venv (installs postgresql, postgis, stac-fastapi-pgstac)"
REQUIRE_ENV = "CLOUDMASK_REQUIRE_STAC_API"
PASSWORD = "cloudmask"  # trust auth: any password works; stac-fastapi insists on one
DATABASE = "postgres"


class StacApiUnavailable(RuntimeError):
    """The STAC API cannot be started on this machine (missing packages, no postgres user, ...)."""


@dataclass
class StacApi:
    """A running stac-fastapi-pgstac server."""

    url: str
    dsn: str
    workdir: Path
    collections: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def load(self, collection: Mapping[str, Any], items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Upsert ``collection`` and ``items`` (STAC dicts; each item's ``collection`` is set to the
        collection's id) straight into pgstac. Returns the item dicts as loaded."""
        from pypgstac.db import PgstacDB
        from pypgstac.load import Loader, Methods

        coll = dict(collection)
        loaded = []
        for item in items:
            d = copy.deepcopy(dict(item))
            d["collection"] = coll["id"]
            d["links"] = [lk for lk in d.get("links", []) if lk.get("rel") not in ("self", "root", "parent", "collection")]
            loaded.append(d)
        with PgstacDB(dsn=self.dsn) as db:
            loader = Loader(db=db)
            loader.load_collections(iter([coll]), insert_mode=Methods.upsert)
            if loaded:
                loader.load_items(iter(loaded), insert_mode=Methods.upsert)
        self.collections[coll["id"]] = coll
        self.items.setdefault(coll["id"], [])
        ids = {d["id"] for d in loaded}
        self.items[coll["id"]] = [d for d in self.items[coll["id"]] if d["id"] not in ids] + loaded
        return loaded

    def unload(self, collection_id: str, ids: Iterable[str]) -> None:
        """Delete items from pgstac and from this server's record of what it holds."""
        from pypgstac.db import PgstacDB

        ids = set(ids)
        with PgstacDB(dsn=self.dsn) as db:
            for item_id in ids:
                list(db.query("SELECT delete_item(%s, %s);", [item_id, collection_id]))
        if collection_id in self.items:
            self.items[collection_id] = [d for d in self.items[collection_id] if d["id"] not in ids]


def simple_collection(collection_id: str, items: Iterable[Mapping[str, Any]], description: str = "") -> dict[str, Any]:
    """A minimal valid STAC Collection whose extent covers ``items``."""
    items = list(items)
    bboxes = [i["bbox"] for i in items if i.get("bbox")]
    if bboxes:
        west = min(b[0] for b in bboxes)
        east = max(b[2] for b in bboxes)
        if any(b[0] > b[2] for b in bboxes):  # antimeridian: whole world is simplest
            west, east = -180.0, 180.0
        bbox = [west, min(b[1] for b in bboxes), east, max(b[3] for b in bboxes)]
    else:
        bbox = [-180.0, -90.0, 180.0, 90.0]
    times: list[str] = sorted(
        str(t) for i in items for t in (i["properties"].get("datetime"), i["properties"].get("start_datetime")) if t
    )
    interval: list[str | None] = [times[0], times[-1]] if times else [None, None]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection_id,
        "description": description or f"cloudmask test collection {collection_id}",
        "license": "proprietary",
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "links": [],
    }


# ---------------------------------------------------------------------------------------- availability


def _pg_bindir() -> Path | None:
    """Directory of initdb/postgres of the newest installed PostgreSQL that has PostGIS."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        version = bindir.parent.name
        if (bindir / "postgres").exists() and Path(f"/usr/share/postgresql/{version}/extension/postgis.control").exists():
            found.append((float(version) if version.replace(".", "").isdigit() else 0.0, bindir))
    if found:
        return max(found)[1]
    initdb_path = shutil.which("initdb")
    if initdb_path:
        bindir = Path(initdb_path).resolve().parent
        sharedir = subprocess.run([str(bindir / "pg_config"), "--sharedir"], capture_output=True, text=True)
        if sharedir.returncode == 0 and Path(sharedir.stdout.strip(), "extension", "postgis.control").exists():
            return bindir
    return None


def check_available() -> Path:
    """The PostgreSQL bin directory; raises :class:`StacApiUnavailable` saying what is missing."""
    missing = [m for m in ("stac_fastapi.pgstac", "pypgstac", "psycopg", "uvicorn") if not _has_module(m)]
    bindir = _pg_bindir()
    if bindir is None:
        missing.insert(0, "PostgreSQL server with PostGIS 3 (Debian: postgresql postgresql-15-postgis-3)")
    if missing:
        raise StacApiUnavailable(f"STAC API test server needs {', '.join(missing)}: {SETUP_HINT}")
    assert bindir is not None
    return bindir


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A 127.0.0.1 port with nothing listening (for unreachable-server tests)."""
    return _free_port()


# ---------------------------------------------------------------------------------------- start/stop


def _run_as() -> dict[str, Any]:
    """subprocess kwargs to drop root to the ``postgres`` user (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as err:
        raise StacApiUnavailable(
            "running as root and no 'postgres' system user exists to run the test database: " + SETUP_HINT
        ) from err
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _check(cmd: list[str], what: str, **kw: Any) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")


def _wait(pred: Any, timeout: float, what: str, proc: subprocess.Popen[Any] | None = None, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = logfile.read_text()[-3000:] if logfile and logfile.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n{tail}")
        if pred():
            return
        time.sleep(0.1)
    tail = logfile.read_text()[-3000:] if logfile and logfile.exists() else ""
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s:\n{tail}")


def _pg_ready(port: int, dsn: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# ---------------------------------------------------------------------------------------- clean exits

#: Where running test servers are recorded (one JSON pid file each).
STATE_DIR = Path(tempfile.gettempdir()) / "cloudmask-stacapi"
_LIVE: dict[Path, Any] = {}  # pid file -> stop() of each server this process runs
_HOOKED = False


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pid: int, started: int | None, sig: int = signal.SIGKILL) -> None:
    """Kill the process group led by ``pid`` if ``pid`` is still the process that was recorded."""
    if started is None or _start_time(pid) != started:
        return  # gone, or the pid now belongs to someone else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _record(workdir: Path, procs: Mapping[str, subprocess.Popen[Any]]) -> Path:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.chmod(STATE_DIR, 0o1777)  # shared by every user's test runs, like /tmp
    doc = {"owner": os.getpid(), "owner_started": _start_time(os.getpid()), "workdir": str(workdir),
           "procs": {name: {"pid": p.pid, "started": _start_time(p.pid)} for name, p in procs.items()}}
    path = STATE_DIR / f"{os.getpid()}-{workdir.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)
    return path


def sweep_stale(state_dir: Path | None = None) -> list[Path]:
    """Stop the servers of test processes that died without stopping them; returns the pid files swept.

    A pid file is stale when its owner process is gone (or its pid was reused). What it names is
    killed only when the recorded pid still has the recorded start time.
    """
    swept = []
    for path in sorted((state_dir or STATE_DIR).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        owner = int(doc.get("owner", 0))
        if owner and _alive(owner) and _start_time(owner) == doc.get("owner_started"):
            continue  # a live test run (maybe another user's): leave it alone
        for proc in doc.get("procs", {}).values():
            _kill_group(int(proc["pid"]), proc.get("started"))
        if doc.get("workdir"):
            shutil.rmtree(doc["workdir"], ignore_errors=True)
        path.unlink(missing_ok=True)
        log.warning("swept STAC API test servers left by dead process %s (%s)", owner, path.name)
        swept.append(path)
    return swept


def _stop_all_live() -> None:
    for stop in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            stop()


def _on_signal(signum: int, frame: Any) -> None:
    _stop_all_live()
    previous = _PREVIOUS.get(signum)
    if callable(previous):
        previous(signum, frame)
    else:  # default action: die of the same signal
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


_PREVIOUS: dict[int, Any] = {}


def _install_exit_hooks() -> None:
    """atexit + SIGTERM/SIGHUP handlers (chained to any earlier handler), once per process."""
    global _HOOKED
    if _HOOKED:
        return
    _HOOKED = True
    import atexit
    import threading

    atexit.register(_stop_all_live)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            _PREVIOUS[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_signal)


def _die_with_parent(sig: int) -> Any:
    """A ``preexec_fn`` asking the kernel to send ``sig`` to the child when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


@contextlib.contextmanager
def start_stac_api(startup_timeout: float = 90.0) -> Iterator[StacApi]:
    """Start postgres + pgstac + stac-fastapi-pgstac; yield a :class:`StacApi`; stop and clean up."""
    bindir = check_available()
    sweep_stale()
    _install_exit_hooks()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="cloudmask-stacapi-"))
    run_as = _run_as()
    pg: subprocess.Popen[Any] | None = None
    api: subprocess.Popen[Any] | None = None
    pg_log_fh = api_log_fh = None
    state: Path | None = None
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        _stop(api, signal.SIGTERM)
        _stop(pg, signal.SIGINT)  # fast shutdown
        for fh in (pg_log_fh, api_log_fh):
            if fh is not None:
                fh.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if state is not None:
            state.unlink(missing_ok=True)
            _LIVE.pop(state, None)

    try:
        datadir = workdir / "pgdata"
        sockdir = workdir / "sock"
        sockdir.mkdir()
        if run_as:
            os.chmod(workdir, 0o755)
            for p in (workdir, sockdir):
                os.chown(p, run_as["user"], run_as["group"])
        _check(
            [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            "initdb", cwd=workdir, **run_as,
        )
        port = _free_port()
        dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/{DATABASE}"
        pg_log = workdir / "postgres.log"
        pg_log_fh = open(pg_log, "w")  # noqa: SIM115 - kept open for the server's lifetime
        pg = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(datadir), "-p", str(port), "-h", "127.0.0.1",
             "-k", str(sockdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100"],
            stdout=pg_log_fh, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
            preexec_fn=_die_with_parent(signal.SIGQUIT), **run_as,  # SIGQUIT: immediate shutdown
        )
        state = _record(workdir, {"postgres": pg})
        _LIVE[state] = stop
        _wait(lambda: _pg_ready(port, dsn), 30, "postgres", pg, pg_log)
        t_pg = time.monotonic()
        _check([sys.executable, "-m", "pypgstac.pypgstac", "migrate", "--dsn", dsn], "pypgstac migrate")
        t_migrate = time.monotonic()

        api_port = _free_port()
        env = dict(os.environ)
        env.update({
            "ENABLE_TRANSACTIONS_EXTENSIONS": "true",
            "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": "postgres", "PGPASSWORD": PASSWORD,
            "PGDATABASE": DATABASE,
            # names used by stac-fastapi-pgstac < 5
            "POSTGRES_HOST_READER": "127.0.0.1", "POSTGRES_HOST_WRITER": "127.0.0.1",
            "POSTGRES_PORT": str(port), "POSTGRES_USER": "postgres", "POSTGRES_PASS": PASSWORD,
            "POSTGRES_DBNAME": DATABASE,
            "STAC_FASTAPI_TITLE": "cloudmask test STAC API",
            "STAC_FASTAPI_DESCRIPTION": "stac-fastapi-pgstac started by the cloudmask tests",
            "STAC_FASTAPI_VERSION": "test", "STAC_FASTAPI_LANDING_ID": "cloudmask-test",
        })
        api_log = workdir / "uvicorn.log"
        api_log_fh = open(api_log, "w")  # noqa: SIM115
        api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory",
             "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning"],
            stdout=api_log_fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True,
            preexec_fn=_die_with_parent(signal.SIGTERM),
        )
        state = _record(workdir, {"postgres": pg, "uvicorn": api})
        _LIVE[state] = stop
        url = f"http://127.0.0.1:{api_port}"
        _wait(lambda: _http_ok(url + "/"), startup_timeout, "uvicorn stac-fastapi-pgstac", api, api_log)
        t_api = time.monotonic()
        log.info(
            "STAC API %s up in %.1f s (initdb+postgres %.1f s, migrate %.1f s, uvicorn %.1f s)",
            url, t_api - t0, t_pg - t0, t_migrate - t_pg, t_api - t_migrate,
        )
        yield StacApi(url=url, dsn=dsn, workdir=workdir)
    finally:
        stop()


# ---------------------------------------------------------------------------------------- real items


#: Collection id given to items that carry none (stactools output).
NO_COLLECTION = "stactools-sentinel2"


def real_items(stac_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The real STAC items under ``stac_dir`` (``../shared/data/stac``) grouped by collection id.

    Items without a collection go to :data:`NO_COLLECTION`; of two files with the same id in one
    collection (odc-stac's edited ``_raster_ext`` copy) only the first (sorted by path) is kept.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(stac_dir.rglob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if d.get("type") != "Feature":
            continue
        coll = d.get("collection") or NO_COLLECTION
        out.setdefault(coll, {}).setdefault(d["id"], d)
    return {c: list(items.values()) for c, items in out.items()}


def load_real_items(server: StacApi, stac_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Load every real item under ``stac_dir`` into ``server`` with simple collections."""
    grouped = real_items(stac_dir)
    for coll_id, items in grouped.items():
        server.load(simple_collection(coll_id, items), items)
    return {c: server.items[c] for c in grouped}


def require_stac_api() -> bool:
    """Whether a missing STAC API must fail the tests rather than skip them (``CLOUDMASK_REQUIRE_STAC_API=1``)."""
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------------------- a scripted fake


def fake_item(k: int, collection: str = "fake-s2", cloud: float = 10.0) -> dict[str, Any]:
    """A small valid STAC item (no assets needed for searching), one day apart per ``k``."""
    west, south = 1.0 + 0.1 * k, 43.0
    ring = [[west, south], [west + 0.1, south], [west + 0.1, south + 0.1], [west, south + 0.1], [west, south]]
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": f"fake-item-{k:03d}", "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [ring]}, "bbox": [west, south, west + 0.1, south + 0.1],
        "properties": {"datetime": f"2024-06-{1 + k % 28:02d}T10:00:00Z", "eo:cloud_cover": cloud},
        "links": [], "assets": {},
    }


#: What a scripted page answer can be.
FAULTS = ("ok", "hang", "truncated", "html", "503", "cut")


class FakeStacApi:
    """A STAC API on 127.0.0.1 (``http.server`` in a thread) that answers as scripted.

    ``pages``: the item dicts of each search page (page 1 answers ``POST /search``, page N ``GET
    /search/page/N``, linked by ``next``). ``faults[page]`` lists how successive requests of that
    page (0 = the landing page) are answered, then ``ok``: ``hang`` (accept, never answer),
    ``truncated`` (200 with half the JSON, honest Content-Length), ``html`` (a proxy's 502 page with
    status 200), ``503``, ``cut`` (Content-Length of the whole page, half sent, connection closed).
    ``hits[page]`` counts requests; ``bodies`` keeps each ``POST /search`` body.
    """

    def __init__(self, pages: list[list[dict[str, Any]]], faults: dict[int, list[str]] | None = None) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.pages = pages
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        assert all(f in FAULTS for v in self.faults.values() for f in v), self.faults
        self.hits: dict[int, int] = {}
        self.bodies: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "":
                    fake._answer(self, 0, fake.landing())
                elif self.path.startswith("/search/page/"):
                    n = int(self.path.rsplit("/", 1)[1])
                    fake._answer(self, n, fake.page(n))
                else:
                    fake._send(self, 404, b'{"code": "NotFound"}')

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with fake._lock:
                    fake.bodies.append(json.loads(body or b"{}"))
                fake._answer(self, 1, fake.page(1))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def landing(self) -> dict[str, Any]:
        return {
            "type": "Catalog", "id": "fake", "description": "scripted fake STAC API", "stac_version": "1.0.0",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/item-search#sort",
                "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
                "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
                "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
            ],
            "links": [
                {"rel": "self", "href": self.url + "/", "type": "application/json"},
                {"rel": "root", "href": self.url + "/", "type": "application/json"},
                {"rel": "search", "href": self.url + "/search", "type": "application/geo+json", "method": "POST"},
            ],
        }

    def page(self, n: int) -> dict[str, Any]:
        links = []
        if n < len(self.pages):
            links.append({"rel": "next", "href": f"{self.url}/search/page/{n + 1}", "type": "application/geo+json",
                          "method": "GET"})
        return {"type": "FeatureCollection", "features": self.pages[n - 1], "links": links}

    def _answer(self, h: Any, n: int, doc: dict[str, Any]) -> None:
        with self._lock:
            self.hits[n] = self.hits.get(n, 0) + 1
            script = self.faults.get(n, [])
            fault = script.pop(0) if script else "ok"
        data = json.dumps(doc).encode()
        if fault == "hang":
            self._stop.wait(120)
            h.close_connection = True
        elif fault == "truncated":
            self._send(h, 200, data[: len(data) // 2])
        elif fault == "html":
            self._send(h, 200, b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>", "text/html")
        elif fault == "503":
            self._send(h, 503, b'{"code": "ServiceUnavailable"}')
        elif fault == "cut":
            h.send_response(200)
            h.send_header("Content-Type", "application/geo+json")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
        else:
            self._send(h, 200, data)

    @staticmethod
    def _send(h: Any, code: int, data: bytes, ctype: str = "application/json") -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def __enter__(self) -> FakeStacApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if sys.argv[1:] == ["sweep"]:
        print(f"swept {len(sweep_stale())} stale STAC API test server record(s) in {STATE_DIR}")
    elif sys.argv[1:] == ["check"]:
        with start_stac_api() as server:
            print(f"STAC API test server up at {server.url}; stopping")
    else:
        sys.exit("usage: python tests/stac_api.py sweep|check")
