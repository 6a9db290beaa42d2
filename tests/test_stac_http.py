"""STAC API faults against a real local HTTP server (tests/stac_api.py FakeStacApi, no mocks):
timeouts on every request, retries with backoff, truncated/non-JSON pages, and what the CLI prints."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudmask.errors import CatalogError, CatalogUnreachableError, ConfigError
from cloudmask.retry import RetryPolicy
from cloudmask.stac import HttpPolicy, search

try:
    from .stac_api import FakeStacApi, closed_port, fake_item
except ImportError:  # tests/ not a package
    from stac_api import FakeStacApi, closed_port, fake_item  # type: ignore[no-redef]

#: Short limits so a fault costs a second, not a minute: 0.5 s timeouts, one retry after 0.01 s.
FAST = HttpPolicy(connect_timeout=0.5, read_timeout=0.5, retry=RetryPolicy(count=1, backoff=0.01, backoff_max=0.01))
PAGES = [[fake_item(k) for k in range(0, 3)], [fake_item(k) for k in range(3, 6)]]
ALL_IDS = [d["id"] for page in PAGES for d in page]


def cli_search(url: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``cloudmask search`` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "cloudmask.cli", "search", "--stac", url, *extra],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for w in words:
        assert w in errors[0], errors[0]


def test_paging_works() -> None:
    with FakeStacApi(PAGES) as api:
        assert [i.id for i in search(api.url, http=FAST)] == ALL_IDS
        assert (api.hits[1], api.hits[2]) == (1, 1)


@pytest.mark.timeout(60)
def test_second_page_that_never_answers_fails_with_unreachable() -> None:
    with FakeStacApi(PAGES, faults={2: ["hang"] * 5}) as api:
        with pytest.raises(CatalogUnreachableError, match="search/page/2 failed after 1 retries") as err:
            search(api.url, http=FAST)
        assert "timed out" in str(err.value).lower()
        assert api.hits[2] == 2  # the first try and one retry, each cut off by the read timeout


@pytest.mark.timeout(60)
def test_landing_page_that_never_answers_keeps_its_timeout() -> None:
    """``Client.open`` resets the StacApiIO timeout to None; ours must survive it."""
    with FakeStacApi(PAGES, faults={0: ["hang"] * 5}) as api:
        with pytest.raises(CatalogUnreachableError, match="failed after 1 retries"):
            search(api.url, http=FAST)
        assert api.hits[0] == 2


@pytest.mark.timeout(120)
def test_cli_search_second_page_hangs_one_error_line() -> None:
    with FakeStacApi(PAGES, faults={2: ["hang"] * 5}) as api:
        proc = cli_search(api.url, "--http-timeout", "0.5", "--http-retries", "1")
        assert_one_error_line(proc, 4, "search/page/2", "failed after 1 retries")
        assert api.hits[2] == 2
        # the same limits from the environment
        proc = cli_search(api.url, env={"CLOUDMASK_HTTP_TIMEOUT": "0.5,0.5", "CLOUDMASK_HTTP_RETRIES": "0"})
        assert_one_error_line(proc, 4, "failed after 0 retries")


@pytest.mark.parametrize("fault", ["truncated", "html"])
@pytest.mark.timeout(60)
def test_bad_page_is_retried_then_fails(fault: str, caplog: pytest.LogCaptureFixture) -> None:
    with FakeStacApi(PAGES, faults={2: [fault] * 5}) as api:
        with caplog.at_level(logging.WARNING, logger="cloudmask"), pytest.raises(CatalogUnreachableError) as err:
            search(api.url, http=FAST)
        assert "not JSON" in str(err.value) and "search/page/2" in str(err.value)
        assert api.hits[2] == 2
        assert sum("Retrying GET" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.timeout(120)
def test_cli_truncated_page_gives_error_not_traceback() -> None:
    with FakeStacApi(PAGES, faults={2: ["truncated"] * 5}) as api:
        proc = cli_search(api.url, "--http-timeout", "2", "--http-retries", "1")
        assert_one_error_line(proc, 4, "not JSON", "search/page/2")


@pytest.mark.parametrize("fault", ["truncated", "html", "cut", "503", "hang"])
@pytest.mark.timeout(60)
def test_one_bad_answer_is_retried_and_the_search_completes(fault: str) -> None:
    with FakeStacApi(PAGES, faults={2: [fault]}) as api:
        assert [i.id for i in search(api.url, http=FAST)] == ALL_IDS
        assert api.hits[2] == 2


def test_5xx_is_retried_and_cloud_cover_goes_as_cql2() -> None:
    policy = HttpPolicy(2.0, 2.0, RetryPolicy(count=3, backoff=0.01, backoff_max=0.01))
    with FakeStacApi(PAGES[:1], faults={1: ["503", "503"]}) as api:
        found = search(api.url, collection="fake-s2", max_cloud=20, http=policy)
        assert [i.id for i in found] == ALL_IDS[:3]
        assert api.hits[1] == 3
        body = api.bodies[-1]
        assert body["filter"] == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
        assert body["filter-lang"] == "cql2-json"
        assert "query" not in body
    with FakeStacApi(PAGES[:1], faults={1: ["503"] * 10}) as api:
        with pytest.raises(CatalogUnreachableError, match="after 2 retries"):
            search(api.url, http=HttpPolicy(2.0, 2.0, RetryPolicy(count=2, backoff=0.01, backoff_max=0.01)))
        assert api.hits[1] == 3


def test_unreachable_api_fails_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    with caplog.at_level(logging.WARNING, logger="cloudmask"), pytest.raises(
        CatalogUnreachableError, match="failed after 2 retries"
    ):
        search(url, max_cloud=20, http=HttpPolicy(1.0, 1.0, RetryPolicy(count=2, backoff=0.01, backoff_max=0.01)))
    assert sum("Retrying GET" in r.getMessage() for r in caplog.records) == 2


def test_items_the_server_should_have_filtered_are_dropped() -> None:
    """A server that ignores the filter (as some ignore ``query``) still yields only matching scenes."""
    cloudy = [[fake_item(0, cloud=90.0), fake_item(1, cloud=10.0)]]
    with FakeStacApi(cloudy) as api:
        assert [i.id for i in search(api.url, max_cloud=20, http=FAST)] == ["fake-item-001"]
        assert [i.id for i in search(api.url, min_cloud=20, http=FAST)] == ["fake-item-000"]


def test_http_404_is_a_catalog_error_not_unreachable() -> None:
    with FakeStacApi(PAGES) as api:
        with pytest.raises(CatalogError) as err:
            search(api.url + "/no/such/api", http=FAST)
        assert not isinstance(err.value, CatalogUnreachableError)
        assert api.hits == {}  # a 404 is not retried


def test_http_settings_from_environment_and_options() -> None:
    env: dict[str, Any] = {"CLOUDMASK_HTTP_TIMEOUT": "3,7", "CLOUDMASK_HTTP_RETRIES": "5"}
    p = HttpPolicy.from_env(env)
    assert (p.connect_timeout, p.read_timeout, p.retry.count) == (3.0, 7.0, 5)
    assert HttpPolicy.from_env({"CLOUDMASK_HTTP_TIMEOUT": "4"}).timeout == (4.0, 4.0)
    assert HttpPolicy.from_env({}) == HttpPolicy()
    for bad in ({"CLOUDMASK_HTTP_TIMEOUT": "soon"}, {"CLOUDMASK_HTTP_TIMEOUT": "0"},
                {"CLOUDMASK_HTTP_TIMEOUT": "1,2,3"}, {"CLOUDMASK_HTTP_RETRIES": "-1"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            HttpPolicy.from_env(bad)


def test_cli_bad_http_option_is_an_argument_error() -> None:
    proc = cli_search("http://127.0.0.1:9/", "--http-timeout", "soon")
    assert_one_error_line(proc, 2, "--http-timeout")


@pytest.mark.timeout(120)
def test_job_against_a_hung_api_ends_and_frees_its_lock(tmp_path: Any) -> None:
    """A hung catalogue used to keep ``job run`` (and its lock) forever, so every later run exited 75."""
    from click.testing import CliRunner

    from cloudmask.cli import main
    from cloudmask.jobs.state import JobLock, Journal

    with FakeStacApi(PAGES, faults={2: ["hang"] * 10}) as api:
        spec = tmp_path / "job.toml"
        spec.write_text(f'stac = "{api.url}"\noutput = "out"\nhttp_timeout = 0.5\nhttp_retries = 0\n'
                        "[retries]\ncount = 1\nbackoff = 0.01\n")
        res = CliRunner().invoke(main, ["job", "run", str(spec)])
        assert res.exit_code == CatalogUnreachableError.exit_code == 4, res.output
        assert res.output.count("error:") == 1 and "search/page/2" in res.output
        assert api.hits[2] == 2  # the job searched twice ([retries] count = 1), one request each
    out = tmp_path / "out"
    assert JobLock(out).running() is None
    JobLock(out).acquire().release()
    ends = [e for e in Journal(out).events() if e["event"] == "run-end"]
    assert ends and ends[-1]["error_type"] == "CatalogUnreachableError"


@pytest.mark.timeout(120)
def test_cli_run_against_a_hung_api_ends(tmp_path: Any) -> None:
    with FakeStacApi(PAGES, faults={1: ["hang"] * 5}) as api:
        proc = subprocess.run(
            [sys.executable, "-m", "cloudmask.cli", "run", "--stac", api.url, "--out", str(tmp_path / "out"),
             "--backend", "emulated", "--http-timeout", "0.5", "--http-retries", "0"],
            capture_output=True, text=True, timeout=120,
        )
        assert_one_error_line(proc, 4, "POST http://", "/search failed after 0 retries")
        assert api.hits[1] == 1


# ------------------------------------------------------------- static catalogues served over HTTP (issue 24.7)


class _StaticServer:
    """A real ``http.server`` serving a folder (a static STAC catalogue) with byte ranges, as static
    hosting does (GDAL reads COGs by range); ``faults[path]`` lists how successive GETs of that path
    misbehave (``"503"``, ``"hang"``; then it answers normally)."""

    def __init__(self, root: Any, faults: dict[str, list[str]] | None = None) -> None:
        import functools
        import http.server
        import threading
        import time

        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                fault = server.faults.get(self.path, [])
                if fault:
                    kind = fault.pop(0)
                    if kind == "hang":
                        time.sleep(2.0)
                        return
                    self.send_error(int(kind))
                    return
                rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if rng is None:
                    super().do_GET()
                    return
                data = Path(self.translate_path(self.path)).read_bytes()
                start, end = int(rng[1]), min(int(rng[2] or len(data) - 1), len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                self.wfile.write(data[start:end + 1])

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def __enter__(self) -> _StaticServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _item_path(item_id: str) -> str:
    return f"/sentinel-2-c1-l2a/{item_id}/{item_id}.json"


def test_static_catalogue_over_http_is_read_and_filtered(sample_catalog: Any) -> None:
    local = search(str(sample_catalog), datetime="2024-06-15/2024-06-30", max_cloud=100)
    with _StaticServer(sample_catalog.parent) as srv:
        found = search(f"{srv.url}/catalog.json", datetime="2024-06-15/2024-06-30", max_cloud=100, http=FAST)
        every = search(f"{srv.url}/catalog.json", http=FAST)
    assert [i.id for i in found] == [i.id for i in local] and 0 < len(found) < len(every) == 3
    for it in found:  # the bands are URLs on the same server, not paths relative to an item document
        assert it.assets["red"].href.startswith(srv.url + "/sentinel-2-c1-l2a/"), it.assets["red"].href


@pytest.mark.timeout(60)
def test_static_catalogue_over_http_retries_and_times_out(sample_catalog: Any) -> None:
    ids = [i.id for i in search(str(sample_catalog))]
    page = _item_path(ids[1])
    with _StaticServer(sample_catalog.parent, faults={page: ["503"]}) as srv:
        assert [i.id for i in search(f"{srv.url}/catalog.json", http=FAST)] == ids
        assert srv.hits[page] == 2  # the 503 was retried
    with _StaticServer(sample_catalog.parent, faults={page: ["hang", "hang"]}) as srv:
        with pytest.raises(CatalogUnreachableError, match="failed after 1 retries"):
            search(f"{srv.url}/catalog.json", http=FAST)
        assert srv.hits[page] == 2  # each try cut off by the read timeout


@pytest.mark.slow
def test_cli_run_masks_a_static_catalogue_over_http(sample_catalog: Any, tmp_path: Any) -> None:
    with _StaticServer(sample_catalog.parent) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "cloudmask.cli", "run", "--stac", f"{srv.url}/catalog.json", "--limit", "1",
             "--out", str(tmp_path / "o"), "--no-quicklook"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "without item search" not in proc.stderr and "warning" not in proc.stderr
    assert len(list((tmp_path / "o").glob("*_cloudmask.tif"))) == 1
