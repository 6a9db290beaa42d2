"""Shared pytest helpers."""

from __future__ import annotations

import os
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
