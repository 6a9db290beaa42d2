"""Disk cache of the static-shape graphs that :class:`~cloudmask.runtime.onnx.OnnxRunner` hands to ONNX Runtime.

Pinning a graph's symbolic dims needs the ``onnx`` package (about a second to import). The pinned bytes
are written once per (model file, shape) to ``<cache>/graphs/<key>.onnx`` (``$CLOUDMASK_CACHE_DIR`` or the
user cache dir) and later runners, in this process or another, load them straight into ONNX Runtime.
The key covers the model file (resolved path, size, mtime, inode), the pinned shape, the ``onnx`` version
and :data:`PIN_VERSION`. A missing, unreadable or unwritable cache only costs a rebuild: nothing here
raises. ``CLOUDMASK_GRAPH_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from importlib import metadata
from pathlib import Path

from ..atomic import write_bytes
from ..user_cache import cache_dir

log = logging.getLogger(__name__)

#: Bump when the graph-pinning code (``static_graph``, ``pixel_graph``) changes what it writes.
PIN_VERSION = 1


def enabled() -> bool:
    """False when ``$CLOUDMASK_GRAPH_CACHE`` is ``0`` (every runner then pins its graph with ``onnx``)."""
    return os.environ.get("CLOUDMASK_GRAPH_CACHE", "1").strip() != "0"


@functools.cache
def _onnx_version() -> str:
    try:
        return metadata.version("onnx")
    except metadata.PackageNotFoundError:
        return "none"


def graph_key(onnx_path: Path, request: tuple[object, ...]) -> str | None:
    """Cache key of ``onnx_path`` pinned as ``request`` (e.g. ``("patch", 1, 256, 256)``); None if unreadable."""
    try:
        resolved = Path(onnx_path).resolve()
        st = resolved.stat()
    except OSError as err:
        log.debug("graph cache: cannot stat %s: %s", onnx_path, err)
        return None
    parts = (str(resolved), st.st_size, st.st_mtime_ns, st.st_ino, tuple(request), _onnx_version(), PIN_VERSION)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def graph_path(key: str) -> Path:
    """Where the graph of ``key`` is (or would be) cached."""
    return cache_dir() / "graphs" / f"{key}.onnx"


def read(key: str) -> bytes | None:
    """The cached graph bytes of ``key``; None when absent, empty or unreadable."""
    try:
        data = graph_path(key).read_bytes()
    except FileNotFoundError:
        return None
    except Exception as err:  # noqa: BLE001 - a broken cache must never fail a run
        log.debug("graph cache: cannot read %s: %s", key, err)
        return None
    return data or None


def write(key: str, data: bytes) -> None:
    """Store ``data`` under ``key`` atomically (temp file + rename); failures are logged and ignored."""
    try:
        path = graph_path(key)
        write_bytes(path, data)
    except Exception as err:  # noqa: BLE001 - an unwritable cache must never fail a run
        log.debug("graph cache: cannot write %s: %s", key, err)
        return
    log.debug("graph cache: wrote %s (%d bytes)", path, len(data))
