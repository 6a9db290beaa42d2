"""Shared pytest helpers."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir(*parts: str) -> Path:
    """``../shared`` (relative to the repo root), or a path inside it.

    Skips the calling test when it is absent, unless ``CLOUDMASK_REQUIRE_SHARED=1``, which makes the
    test fail instead (CI with the shared data mounted must not silently skip).
    """
    path = REPO_ROOT.parent / "shared"
    path = path.joinpath(*parts) if parts else path
    if not path.exists():
        msg = f"../shared not present: {path} does not exist"
        if os.environ.get("CLOUDMASK_REQUIRE_SHARED") == "1":
            pytest.fail(msg + " (CLOUDMASK_REQUIRE_SHARED=1)", pytrace=False)
        pytest.skip(msg)
    return path


# ---- the fast loop: tests that start a service or another process are marked ``slow`` automatically

#: fixtures that start a service (PostgreSQL + stac-fastapi) or a Jupyter kernel
SERVICE_FIXTURES = frozenset({"stac_api", "stac_api_real", "kernel_env"})
#: source text that starts another process (a CLI in a subprocess, a multi-process dask cluster)
PROCESS_CALL = re.compile(r"\bsubprocess\.|\bPopen\(|\bLocalCluster\(|processes=True|\bos\.fork\(")


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def _starts_processes(item: pytest.Item, helpers: dict[str, set[str]]) -> str | None:
    """Why ``item`` is slow (a service fixture, or a process started by it, its fixtures or a helper
    function of its module one call away), or None."""
    names = set(getattr(item, "fixturenames", ()))
    if names & SERVICE_FIXTURES:
        return f"uses {', '.join(sorted(names & SERVICE_FIXTURES))}"
    module = getattr(item, "module", None)
    if module is None:
        return None
    if module.__name__ not in helpers:  # module functions whose source starts a process
        helpers[module.__name__] = {
            name for name, fn in vars(module).items()
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and PROCESS_CALL.search(_source(fn))
        }
    texts = [_source(getattr(item, "function", None))]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        texts += [_source(d.func) for d in defs if str(REPO_ROOT / "tests") in (inspect.getsourcefile(d.func) or "")]
    text = "\n".join(texts)
    if PROCESS_CALL.search(text):
        return "starts a process"
    called = {h for h in helpers[module.__name__] if re.search(rf"\b{re.escape(h)}\(", text)}
    return f"starts a process (through {', '.join(sorted(called))})" if called else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that starts a service or a process ``slow``: `make test-fast` (``-m "not slow"``)
    then runs the unit and in-process tests only, and `make test` runs everything."""
    helpers: dict[str, set[str]] = {}
    for item in items:
        if item.get_closest_marker("slow") is None and _starts_processes(item, helpers):
            item.add_marker(pytest.mark.slow)


# ---- the Axelera runtime, emulated after the SDK's docs (no Metis hardware or Voyager SDK here)


@pytest.fixture()
def fake_sdk():
    """``axelera.runtime`` importable as the emulated low-level API of SDK 1.6 (no ``op``; one Metis board)."""
    from cloudmask.metis import fake_sdk as emulation
    from cloudmask.metis.fake_sdk import runtime as fake_runtime

    fake_runtime.reset()
    with emulation.installed("1.6") as rt:
        yield rt


@pytest.fixture()
def fake_sdk_18():
    """``axelera.runtime`` and ``axelera.runtime.op`` importable as the emulated SDK 1.8."""
    from cloudmask.metis import fake_sdk as emulation
    from cloudmask.metis.fake_sdk import runtime as fake_runtime

    fake_runtime.reset()
    with emulation.installed("1.8") as rt:
        yield rt


# ---- STAC API test server (stac-fastapi-pgstac over PostgreSQL + pgstac; see tests/stac_api.py)


@pytest.fixture(scope="session")
def stac_api():
    """A running stac-fastapi-pgstac on 127.0.0.1 (``.url``, ``.load(collection, items)``).

    Skips when PostgreSQL/PostGIS/stac-fastapi-pgstac are missing (run ``scripts/stac-api-setup.sh``),
    unless ``CLOUDMASK_REQUIRE_STAC_API=1``, which makes it fail instead.
    """
    try:
        from .stac_api import StacApiUnavailable, require_stac_api, start_stac_api
    except ImportError:  # tests/ not a package
        from stac_api import StacApiUnavailable, require_stac_api, start_stac_api  # type: ignore[no-redef]

    try:
        server_cm = start_stac_api()
        server = server_cm.__enter__()
    except StacApiUnavailable as err:
        if require_stac_api():
            pytest.fail(f"{err} (CLOUDMASK_REQUIRE_STAC_API=1)", pytrace=False)
        pytest.skip(str(err))
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture(scope="session")
def stac_api_real(stac_api):
    """``stac_api`` loaded with every real item of ``../shared/data/stac`` (dict: collection -> items)."""
    try:
        from .stac_api import load_real_items
    except ImportError:  # tests/ not a package
        from stac_api import load_real_items  # type: ignore[no-redef]

    return load_real_items(stac_api, shared_dir("data", "stac"))


# ---- synthetic sample catalogue (cloudmask.sample), shared by the pipeline, API and job tests


@pytest.fixture(scope="session")
def sample_catalogs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``sample_catalogs(size)``: the catalogue of three synthetic scenes of ``size`` px at 10 m (the second
    with a 35 % nodata wedge), made once per size per session; tests only read it."""
    from cloudmask.sample import make_catalog

    made: dict[int, Path] = {}

    def catalogue(size: int) -> Path:
        if size not in made:
            made[size] = make_catalog(tmp_path_factory.mktemp(f"sample{size}"), n_scenes=3, size=size)
        return made[size]

    return catalogue


@pytest.fixture(scope="session")
def sample_catalog(sample_catalogs: Callable[[int], Path]) -> Path:
    """Three small synthetic scenes (600 px at 10 m; the second has a 35 % nodata wedge)."""
    return sample_catalogs(600)


@pytest.fixture(scope="session")
def sample_items(sample_catalog: Path) -> list:
    import pystac

    return list(pystac.Catalog.from_file(str(sample_catalog)).get_items(recursive=True))
