"""GDAL settings, applied once per process (never per read).

GDAL's block cache size and its HTTP/VSI options are process-wide: setting them inside
``rasterio.Env`` on every read, from many threads, makes one thread restore what another set (and
``rasterio.Env(GDAL_CACHEMAX=256)`` means 256 *bytes*). :func:`configure_gdal` sets them once:

* the block cache through ``GDALSetCacheMax64``, in **bytes** (default 128 MiB: as fast as 512 MiB on
  a full tile at 10 m, at half the peak memory; ``$CLOUDMASK_GDAL_CACHE_MB`` overrides, in MiB);
* the remote-read options of :data:`DEFAULT_GDAL_OPTIONS` as process defaults (environment
  variables, which GDAL reads whenever a config option is not set otherwise, so a user's own
  environment wins).

Provider-specific options (requester-pays buckets, S3 endpoints) stay per dataset: the reader
applies them in its own worker threads, where rasterio keeps them thread-local. So do the HTTP time
limits of :func:`http_options` (``--http-timeout``/``--http-retries``, the job keys ``http_timeout``/
``http_retries``, ``$CLOUDMASK_HTTP_TIMEOUT``): a server that accepts a connection and never answers
fails that band's read in bounded time instead of hanging the run.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

from rasterio.env import get_gdal_config, set_gdal_config

log = logging.getLogger(__name__)

#: GDAL options for remote COGs: bounded retries, range-request friendly.
DEFAULT_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.jp2,.JP2",
    "VSI_CACHE": "TRUE",
}
#: Options for opening remote files only: no directory listing (one request, not a listing per open).
#: Not process-wide: locally it would hide ``.aux.xml`` sidecars (the masks' category names).
REMOTE_OPEN_OPTIONS: dict[str, str] = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
#: Default GDAL block cache, bytes.
DEFAULT_CACHE_BYTES = 128 * 2**20
#: Options that are process-wide in GDAL and must never be set per dataset or per read.
PROCESS_WIDE = frozenset({"GDAL_CACHEMAX", "GDAL_NUM_THREADS"})

_lock = threading.Lock()
_configured: int | None = None  # pid that configured GDAL (a forked worker configures again)


def cache_bytes() -> int:
    """The block cache size to use, bytes: ``$CLOUDMASK_GDAL_CACHE_MB`` (MiB) or 128 MiB."""
    env = os.environ.get("CLOUDMASK_GDAL_CACHE_MB")
    if env:
        try:
            mb = float(env)
        except ValueError:
            log.warning("CLOUDMASK_GDAL_CACHE_MB=%r is not a number of MiB; using the default", env)
        else:
            if mb > 0:
                return int(mb * 2**20)
    return DEFAULT_CACHE_BYTES


def configure_gdal(cache: int | None = None, options: Mapping[str, Any] | None = None) -> None:
    """Set GDAL's block cache (``cache`` bytes) and default options once for this process.

    Later calls do nothing unless ``cache`` is given explicitly (then the cache is resized).
    """
    global _configured
    with _lock:
        if _configured == os.getpid() and cache is None:
            return
        size = int(cache) if cache is not None else cache_bytes()
        set_gdal_config("GDAL_CACHEMAX", size)
        for key, value in {**DEFAULT_GDAL_OPTIONS, **(options or {})}.items():
            os.environ.setdefault(key, str(value))
        _configured = os.getpid()
        log.debug("GDAL configured: block cache %d bytes", size)


def current_cache_bytes() -> int:
    """GDAL's block cache size now, bytes."""
    return int(get_gdal_config("GDAL_CACHEMAX"))


def http_options(connect_timeout: float, read_timeout: float, retries: int, retry_delay: float = 1.0) -> dict[str, str]:
    """GDAL's HTTP options (``/vsicurl/``, ``/vsis3/``, ...) for these limits (seconds; whole seconds, at least 1).

    ``GDAL_HTTP_CONNECTTIMEOUT``: to open the connection; ``GDAL_HTTP_LOW_SPEED_TIME`` (with
    ``GDAL_HTTP_LOW_SPEED_LIMIT`` 1 byte/s): the longest silence; ``GDAL_HTTP_TIMEOUT``: the whole
    request, three times the read limit (a range request of a COG is small); ``GDAL_HTTP_MAX_RETRY``
    and ``GDAL_HTTP_RETRY_DELAY``: retries of a failed request.
    """
    connect = max(1, math.ceil(connect_timeout))
    read = max(1, math.ceil(read_timeout))
    return {
        "GDAL_HTTP_CONNECTTIMEOUT": str(connect),
        "GDAL_HTTP_LOW_SPEED_TIME": str(read),
        "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
        "GDAL_HTTP_TIMEOUT": str(connect + 3 * read),
        "GDAL_HTTP_MAX_RETRY": str(max(0, int(retries))),
        "GDAL_HTTP_RETRY_DELAY": f"{max(0.0, float(retry_delay)):g}",
    }


def dataset_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` without the process-wide keys (which :func:`configure_gdal` owns)."""
    dropped = PROCESS_WIDE.intersection(options)
    if dropped:
        log.debug("ignoring process-wide GDAL options per dataset: %s", sorted(dropped))
    return {k: v for k, v in options.items() if k not in PROCESS_WIDE}
