"""A user's first minutes: `pip install .` (no extras) in a fresh venv, then `cloudmask demo`.

Slow (a few minutes: a new venv and its packages from the registry), so it runs when
``CLOUDMASK_TEST_FRESH_INSTALL=1`` (CI sets it in ``.ci/run``) and is skipped otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.environ.get("CLOUDMASK_TEST_FRESH_INSTALL") != "1",
                    reason="slow: set CLOUDMASK_TEST_FRESH_INSTALL=1 to build a fresh venv (CI does)")
def test_pip_install_without_extras_runs_the_demo(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(REPO / "scripts" / "check-fresh-install.sh"), str(tmp_path / "fresh")],
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "fresh install: 5 masks" in res.stdout
    assert len(list((tmp_path / "fresh" / "out").glob("*_cloudmask.tif"))) == 5
    assert not list((tmp_path / "fresh" / "out").glob("*_quicklook.png"))  # no matplotlib: no quicklooks
