"""A user's first minutes: `pip install .` (no extras) in a fresh venv, then the README's commands and snippet.

Slow (a few minutes: a new venv and its packages from the registry), so it runs when
``CLOUDMASK_TEST_FRESH_INSTALL=1`` (CI sets it in ``.ci/run``) and is skipped otherwise.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
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
    for step in ("models", "demo", "run", "evaluate", "job", "snippet"):  # each README command ran
        assert f"== {step}\n" in res.stdout
    assert "every step ran without a traceback" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def readme_snippet() -> str:
    """The README's Python block (the one check-fresh-install.sh runs)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"In Python / Jupyter.*?```python\n(.*?)```", text, re.S)
    assert m, "README has no Python block after 'In Python / Jupyter'"
    return m.group(1)


@pytest.mark.slow
def test_readme_python_snippet_runs_as_is(tmp_path: Path) -> None:
    """The snippet names nothing it does not define and needs no network (it masks a shipped demo chip)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "masks").glob("*_cloudmask.tif"))) == 1
