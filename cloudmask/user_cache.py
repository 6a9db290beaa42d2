"""The user cache directory: graphs cloudmask derives from installed models (converted, pinned)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where derived graphs are cached (``$CLOUDMASK_CACHE_DIR`` or the platform's user cache dir)."""
    env = os.environ.get("CLOUDMASK_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("cloudmask"))
