"""Lazy, windowed reads of band assets into float32 reflectance on the model grid.

Each band is resampled (GDAL RasterIO with fractional source windows, ``average`` when downsampling)
onto the scene's grid at model resolution, so every band lines up pixel for pixel with the output
mask whatever its native resolution (10/20/60 m) or format (COG, JP2). A band in another CRS than
the item declares is an error, not a silent reprojection. Reads happen in dask tasks on threads; every
thread keeps its own open handles (GDAL handles are not thread-safe).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import rasterio
from dask.highlevelgraph import HighLevelGraph
from odc.geo.geobox import GeoBox
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from .errors import GridError, ReadError
from .gdal_config import REMOTE_OPEN_OPTIONS, configure_gdal, dataset_options, http_options
from .priority import lower_thread_priority
from .scene import BandAsset, SceneSpec

if TYPE_CHECKING:
    from .stac.api import HttpPolicy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderConfig:
    """How bands are read onto the model grid.

    ``resampling`` applies where a band is finer than the grid, ``upsampling`` where it is coarser.
    ``overviews=True`` lets GDAL start from the closest finer overview (what rasterio users get by
    default; several times faster on 10 m bands, within a few DN of the exact area average);
    ``False`` averages native pixels exactly. ``use_footprint`` skips reading columns outside the
    item's valid-data geometry (swath edges). ``chunk_cols`` is the dask chunk width, pixels.
    ``gdal_env`` holds per-dataset GDAL options (credentials, endpoints) on top of the provider
    profile's; process-wide ones (block cache) are set once by :func:`~cloudmask.gdal_config.configure_gdal`.
    ``threads`` is the number of band reads in flight (default: cores + 1, at most one per band: one
    more than the cores evens out bands of unequal cost; 7 % faster at 30 m on 2 cores, even at 10 m).
    ``decode_threads`` is GDAL's own threads per read for compressed blocks (the GTiff/JP2
    ``NUM_THREADS`` open option; default ``min(2, cores)``; 1 turns it off).
    ``http``: time limits and retries of remote reads (:class:`~cloudmask.stac.HttpPolicy`, seconds;
    default :meth:`HttpPolicy.from_env`, where GDAL's own ``GDAL_HTTP_*`` environment variables win).
    """

    resampling: str = "average"
    overviews: bool = True
    use_footprint: bool = True
    upsampling: str = "nearest"
    gdal_env: Mapping[str, Any] = field(default_factory=dict)
    chunk_cols: int = 2048
    threads: int | None = None
    decode_threads: int | None = None
    http: HttpPolicy | None = None

    def http_env(self) -> dict[str, str]:
        """GDAL's HTTP time limits and retries for ``http`` (:func:`~cloudmask.gdal_config.http_options`)."""
        from .stac.api import HttpPolicy

        policy = self.http or HttpPolicy.from_env()
        opts = http_options(policy.connect_timeout, policy.read_timeout, policy.retry.count, policy.retry.backoff)
        if self.http is None:  # the defaults: a user's own GDAL_HTTP_* environment wins
            opts = {k: v for k, v in opts.items() if k not in os.environ}
        return opts


def gdal_path(href: str) -> str:
    """A path GDAL opens: ``s3://`` hrefs go through ``/vsis3/``, ``http(s)://`` through ``/vsicurl/``."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("file://"):
        return href[7:]
    return href


class _Handles:
    """A pool of open datasets per asset: a thread checks one out, reads, and gives it back.

    GDAL handles are not thread-safe, so no two threads share one at a time; reusing the same
    handle for the next strip of a band keeps GDAL's per-dataset block cache warm (each compressed
    block is decoded once, not once per strip and thread).

    :meth:`close` closes the free handles at once and a checked-out handle when it is returned, so a
    read in flight never has its dataset closed under it; a closed pool refuses new checkouts.
    """

    def __init__(self, env: Mapping[str, Any], decode_threads: int = 1,
                 remote: Mapping[str, Any] | None = None) -> None:
        self.env = dataset_options(env)
        # remote files only: REMOTE_OPEN_OPTIONS and the HTTP time limits (a silent server fails, never hangs)
        self.remote = {**REMOTE_OPEN_OPTIONS, **(remote or {}), **self.env}
        self.decode_threads = decode_threads
        self._free: dict[tuple[str, int | None], list[Any]] = {}
        self._out: set[int] = set()  # id() of checked-out handles
        self._closed = False
        self._lock = threading.Lock()

    @contextmanager
    def _env(self, href: str) -> Iterator[None]:
        """Per-dataset options around an open of ``href`` (thread-local in worker threads): the profile's,
        plus :data:`~cloudmask.gdal_config.REMOTE_OPEN_OPTIONS` and the HTTP limits for remote files;
        nothing when none apply."""
        env = self.remote if gdal_path(href).startswith("/vsi") else self.env
        if env:
            with rasterio.Env(**env):
                yield
        else:
            yield

    def overview_levels(self, asset: BandAsset) -> list[int]:
        """Decimation factors of the asset's overviews (e.g. ``[2, 4, 8]``).

        Pooled handles are opened with ``OVERVIEW_LEVEL`` set (``NONE`` hides the overviews; a level
        lists the coarser ones relative to itself), so this opens the asset plainly, once."""
        try:
            with self._env(asset.href), rasterio.open(gdal_path(asset.href)) as ds:
                return list(ds.overviews(1))
        except rasterio.RasterioIOError as err:
            raise ReadError(f"cannot open band '{asset.band}' at {asset.href}: {err}") from err

    @contextmanager
    def checkout(self, asset: BandAsset, level: int | None) -> Iterator[Any]:
        """A dataset of ``asset``: full resolution (``level=None``) or overview ``level`` (0 = first)."""
        key = (asset.href, level)
        with self._lock:
            if self._closed:
                raise ReadError(f"the reader of band '{asset.band}' is closed; open the scene again")
            free = self._free.setdefault(key, [])
            ds = free.pop() if free else None
            if ds is not None:
                self._out.add(id(ds))
        if ds is None:
            opts: dict[str, Any] = {"OVERVIEW_LEVEL": "NONE"} if level is None else {"overview_level": level}
            if self.decode_threads > 1 and asset.href.lower().split("?")[0].endswith((".tif", ".tiff")):
                opts["NUM_THREADS"] = str(self.decode_threads)  # a GTiff open option (GDAL >= 3.6)
            try:
                with self._env(asset.href):
                    ds = rasterio.open(gdal_path(asset.href), **opts)
            except rasterio.RasterioIOError as err:
                remote = gdal_path(asset.href).startswith("/vsi")
                raise ReadError(
                    f"cannot open band '{asset.band}' at {asset.href}: {err}; check the href, the file, "
                    "and credentials for remote storage"
                    + ("; a server that does not answer within the HTTP time limit (--http-timeout, the job's "
                       "http_timeout) fails the same way" if remote else "")
                ) from err
            with self._lock:
                self._out.add(id(ds))
        try:
            yield ds
        finally:
            with self._lock:
                self._out.discard(id(ds))
                keep = not self._closed
                if keep:
                    self._free.setdefault(key, []).append(ds)
            if not keep:
                _close_quietly(ds)

    def close(self) -> None:
        """Close the free handles now and the checked-out ones as they come back."""
        with self._lock:
            self._closed = True
            free = [h for hs in self._free.values() for h in hs]
            self._free.clear()
        for h in free:
            _close_quietly(h)


def _close_quietly(ds: Any) -> None:
    with contextlib.suppress(Exception):  # closing is best effort
        ds.close()


def _native_window(ds: Any, asset: BandAsset, geobox: GeoBox, rows: tuple[int, int],
                   cols: tuple[int, int]) -> Window:
    """The (fractional) window of ``ds`` under grid pixels ``rows`` x ``cols``; checks CRS and axes."""
    if ds.crs is None:
        raise GridError(f"band '{asset.band}' ({asset.href}) has no CRS; it cannot be placed on the scene grid")
    if CRS.from_user_input(ds.crs) != CRS.from_user_input(str(geobox.crs)):
        raise GridError(
            f"band '{asset.band}' is in {ds.crs.to_string()} but the item says {geobox.crs}; "
            "the STAC item's proj:epsg/proj:code does not match the file: fix the item or choose --profile"
        )
    t = ds.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise GridError(f"band '{asset.band}' ({asset.href}) is rotated or flipped; north-up rasters only")
    g = geobox.transform
    x0 = (g.c + cols[0] * g.a - t.c) / t.a
    y0 = (g.f + rows[0] * g.e - t.f) / t.e
    return Window(x0, y0, (cols[1] - cols[0]) * g.a / t.a, (rows[1] - rows[0]) * g.e / t.e)


def _rational(ratio: float, max_den: int = 6) -> tuple[int, int] | None:
    """``(q, p)`` with ``ratio == q / p`` for small integers, or None (e.g. 1.5 -> (3, 2), 3 -> (3, 1))."""
    frac = Fraction(ratio).limit_denominator(max_den)
    if abs(float(frac) - ratio) > 1e-9 or frac <= 0:
        return None
    return frac.numerator, frac.denominator


#: Environment variable overriding :data:`MAX_GRID_PIXELS`.
MAX_PIXELS_ENV = "CLOUDMASK_MAX_GRID_PIXELS"
#: Largest scene grid read, pixels (2**31: a Sentinel-2 tile down to 2.4 m; streams in bounded memory).
MAX_GRID_PIXELS = 2**31


def max_grid_pixels() -> int:
    """The largest scene grid to read, pixels: ``$CLOUDMASK_MAX_GRID_PIXELS`` or :data:`MAX_GRID_PIXELS`."""
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            return max(1, int(float(env)))
        except ValueError:
            log.warning("%s=%r is not a number of pixels; using %d", MAX_PIXELS_ENV, env, MAX_GRID_PIXELS)
    return MAX_GRID_PIXELS


def _upsample_plan(win: Window, shape: tuple[int, int]) -> tuple[Window, np.ndarray, np.ndarray]:
    """For a band coarser than (or as fine as) the grid: the whole native pixels under the fractional
    window ``win`` (a :class:`Window`) and, per grid row and column of ``shape``, the native row and
    column (relative to that window) whose pixel centre it falls in (nearest neighbour)."""
    h, w = shape
    rows = np.floor(win.row_off + (np.arange(h) + 0.5) * win.height / h).astype(np.int64)
    cols = np.floor(win.col_off + (np.arange(w) + 0.5) * win.width / w).astype(np.int64)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    return Window(c0, r0, c1 - c0, r1 - r0), rows - r0, cols - c0


def _read_native(ds: Any, native: Window, fill: float) -> np.ndarray:
    inside = native.row_off >= 0 and native.col_off >= 0 and native.row_off + native.height <= ds.height \
        and native.col_off + native.width <= ds.width
    return np.asarray(ds.read(1, window=native, boundless=not inside, fill_value=None if inside else fill))


def _repeat(index: np.ndarray) -> int:
    """``k`` when ``index == arange(n) // k`` with ``n`` a multiple of ``k`` (each native pixel repeated
    ``k`` times, aligned), else 0."""
    n = index.size
    for k in (1, 2, 3, 6):
        if n % k == 0 and index[-1] == n // k - 1 and np.array_equal(index, np.arange(n) // k):
            return k
    return 0


def _scale_into(out: np.ndarray, data: np.ndarray, ky: int, kx: int, scale: float, offset: float,
                invalid: np.ndarray | None) -> None:
    """``out`` = ``data * scale + offset`` (NaN where ``invalid``), each native pixel of ``data``
    repeated ``ky`` x ``kx`` times: scaled at native size, then written once into ``out``."""
    if ky == kx == 1:
        np.multiply(data, np.float32(scale), out=out, casting="unsafe")
        if offset:
            out += np.float32(offset)
        if invalid is not None:
            np.copyto(out, np.float32(np.nan), where=invalid)
        return
    small = np.multiply(data, np.float32(scale), dtype=np.float32)
    if offset:
        small += np.float32(offset)
    if invalid is not None:
        np.copyto(small, np.float32(np.nan), where=invalid)
    if kx == 2 and out.strides[-1] == out.itemsize and out.shape[-1] % 2 == 0:
        # each value twice along the row: v * (1 + 1j) is the pair (v, v) exactly, written as one complex64
        # (3x faster than a broadcast copy over a trailing axis of 2, 1.3x faster than np.repeat)
        wide, dst = small * np.complex64(1 + 1j), out.view(np.complex64)
    else:
        wide, dst = (np.repeat(small, kx, axis=1) if kx > 1 else small), out
    for j in range(ky):
        dst[j::ky] = wide


def _repeat_into(out: np.ndarray, data: np.ndarray, ky: int, kx: int) -> None:
    """``out`` = ``data`` (DN, same integer dtype), each native pixel repeated ``ky`` x ``kx`` times."""
    if ky == kx == 1:
        if out is not data:
            out[...] = data
        return
    if kx == 2 and data.dtype.itemsize == 2 and out.strides[-1] == out.itemsize and out.shape[-1] % 2 == 0:
        # each value twice along the row: v * 0x10001 is the pair (v, v) of 16-bit halves, one uint32 store
        wide, dst = data.astype(np.uint32) * np.uint32(0x10001), out.view(np.uint32)
    else:
        wide, dst = (np.repeat(data, kx, axis=1) if kx > 1 else data), out
    for j in range(ky):
        dst[j::ky] = wide


def _inside(win: Window, ds: Any) -> bool:
    eps = 1e-6
    return (win.col_off >= -eps and win.row_off >= -eps and win.col_off + win.width <= ds.width + eps
            and win.row_off + win.height <= ds.height + eps)


def column_parts(width: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` column ranges ``[c0, c1)`` of about equal width covering ``[0, width)``, left to right."""
    n = max(1, min(parts, width))
    edges = np.linspace(0, width, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


class _Progress:
    """How far a background read got (columns ``[0, ready)``) and its future; shared by views of its rows."""

    def __init__(self) -> None:
        self.ready = 0
        self.future: Future[Any] | None = None
        self.cond = threading.Condition()


class RowsAhead:
    """Rows read in the background, column part by column part: ``data`` ``(bands, rows, width)`` (float32
    reflectance, or DN) and ``valid`` ``(rows, width)``; :meth:`wait_cols` blocks until columns
    ``[0, stop)`` are in."""

    def __init__(self, data: np.ndarray, valid: np.ndarray, parts: list[tuple[int, int]],
                 progress: _Progress | None = None) -> None:
        self.data, self.valid, self.parts = data, valid, parts
        self._progress = progress or _Progress()

    @property
    def future(self) -> Future[Any] | None:
        """The background read (its error is the read's error); set once by whoever starts it."""
        return self._progress.future

    @future.setter
    def future(self, fut: Future[Any]) -> None:
        self._progress.future = fut
        fut.add_done_callback(lambda _: self._wake())

    def _wake(self) -> None:
        with self._progress.cond:
            self._progress.cond.notify_all()

    def publish(self, stop: int) -> None:
        """Columns ``[0, stop)`` are read (called by the reading thread)."""
        with self._progress.cond:
            self._progress.ready = stop
            self._progress.cond.notify_all()

    @property
    def done(self) -> bool:
        """The read ended (every column is in, or it failed: :meth:`wait_cols` raises its error)."""
        fut = self._progress.future
        return fut is not None and fut.done()

    def wait_cols(self, stop: int) -> None:
        """Block until columns ``[0, stop)`` are read; raises the read's error if it failed."""
        p = self._progress
        with p.cond:
            while p.ready < stop and not self.done:
                p.cond.wait(0.1)
        if p.ready < stop and p.future is not None:
            p.future.result()  # the read's own error
            raise ReadError("a background read ended before its rows were read")  # pragma: no cover

    def settle(self) -> None:
        """Wait for the read to end, whatever its outcome (before its buffers may be dropped)."""
        if self._progress.future is not None:
            wait([self._progress.future])

    def rows(self, r0: int, r1: int) -> RowsAhead:
        """Rows ``[r0, r1)`` of these (views, sharing this read's progress)."""
        return RowsAhead(self.data[:, r0:r1], self.valid[r0:r1], self.parts, self._progress)


def _same_kind(a: Any, b: Any) -> bool:
    """Whether two reads give the same values: both ``"raw"`` (DN), both plain reflectance (None), or both
    reflectance with equal ``(multiply, add)``."""
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return (a is None and b is None) or (isinstance(a, str) and a == b)
    return all(np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b, strict=True))


class RasterSource:
    """A scene's bands on one grid, read lazily: ``(bands, rows, cols)`` float32 reflectance, NaN = nodata.

    ``read_rows`` is the engine's entry point; :meth:`to_dask` gives the same pixels as a dask array
    (chunks: one band x ``row_chunks`` x ``chunk_cols``).
    """

    def __init__(
        self,
        spec: SceneSpec,
        bands: Sequence[str],
        geobox: GeoBox,
        config: ReaderConfig | None = None,
    ) -> None:
        self.spec = spec
        self.bands = tuple(bands)
        self.assets = spec.assets_for(self.bands)
        self.geobox = geobox
        self.config = config or ReaderConfig()
        env = dict(self.config.gdal_env)
        env.update(spec.gdal_env)  # the provider profile's settings
        configure_gdal()
        decode = self.config.decode_threads
        self._handles = _Handles(env, min(2, os.cpu_count() or 1) if decode is None else decode,
                                 remote=self.config.http_env())
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = None  # prefetch thread (started on first use)
        self._prefetched: tuple[int, int, Any, RowsAhead] | None = None  # rows, kind ("raw" or affine), read
        self._pool_lock = threading.Lock()
        self._invalid_lock = threading.Lock()  # band threads OR their nodata into one mask
        self._closed = False
        self._levels: dict[int, int | None] = {}
        self._footprint = self._pixel_footprint()
        self._name = f"cloudmask-read-{spec.id}-{id(self)}"
        self._dn_dtype: Any = False  # not looked up yet

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.geobox.height), int(self.geobox.width)

    @property
    def dn_dtype(self) -> np.dtype[Any] | None:
        """The DN dtype every band shares when it is an integer of at most 16 bits (Sentinel-2: uint16),
        else None: then ``read_rows(raw=True)`` is refused and callers read reflectance. Opens the bands."""
        if self._dn_dtype is False:
            kinds = set()
            for asset in self.assets:
                with self._handles.checkout(asset, None) as ds:
                    kinds.add(np.dtype(ds.dtypes[0]))
            one = kinds.pop() if len(kinds) == 1 else None
            self._dn_dtype = one if one is not None and one.kind in "ui" and one.itemsize <= 2 else None
        return self._dn_dtype  # type: ignore[return-value]

    def dn_affine(self, affine: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per band ``(multiply, add)`` (float64) turning DN into ``reflectance * affine[0] + affine[1]``
        (reflectance without ``affine``): what :meth:`read_rows` applies, for callers of ``raw=True``."""
        n = len(self.assets)
        m = np.ones(n) if affine is None else np.asarray(affine[0], np.float64)
        a = np.zeros(n) if affine is None else np.asarray(affine[1], np.float64)
        scale = np.array([asset.scale for asset in self.assets], np.float64)
        offset = np.array([asset.offset for asset in self.assets], np.float64)
        return scale * m, offset * m + a

    def _level(self, band: int) -> int | None:
        """Overview to read ``band`` from: the coarsest one still at least as fine as the grid (cached)."""
        if band in self._levels:
            return self._levels[band]
        level: int | None = None
        if self.config.overviews:
            asset = self.assets[band]
            try:
                factors = self._handles.overview_levels(asset)
                with self._handles.checkout(asset, None) as ds:
                    native = ds.res[0]
            except (ReadError, rasterio.RasterioIOError):
                factors, native = [], 0.0
            grid = abs(self.geobox.resolution.x)
            for k, f in enumerate(factors):
                if native * f <= grid + 1e-9 and _rational(grid / (native * f)) is not None:
                    level = k
        self._levels[band] = level
        return level

    def read_block(self, band: int, rows: tuple[int, int], cols: tuple[int, int],
                   out: np.ndarray | None = None, affine: tuple[float, float] | None = None,
                   invalid_into: np.ndarray | None = None, raw: bool = False) -> np.ndarray:
        """Reflectance of one band over ``rows`` x ``cols`` (pixel ranges), float32, NaN = nodata
        (written into ``out``, a float32 array or view of that shape, when given).

        ``affine`` ``(multiply, add)``: return ``reflectance * multiply + add`` instead, in the same
        pass that scales the DN (a model's affine normalisation folded into the read).
        ``invalid_into`` (bool, that shape): this band's nodata pixels are OR-ed into it (thread-safe).
        ``raw``: the DN themselves on the grid, in the file's dtype (:attr:`dn_dtype`), nodata left as read
        (``invalid_into`` tells): the caller scales them (:meth:`dn_affine`), e.g. while it copies them."""
        asset = self.assets[band]
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        level = self._level(band)
        if out is None:
            out = np.empty(shape, self.dn_dtype if raw else np.float32)
        scale, offset = asset.scale, asset.offset
        if affine is not None:
            scale, offset = scale * affine[0], offset * affine[0] + affine[1]
        with self._handles.checkout(asset, level) as ds:
            win = _native_window(ds, asset, self.geobox, rows, cols)
            finer = ds.res[0] < abs(self.geobox.resolution.x) - 1e-9
            nodata = asset.nodata if asset.nodata is not None else ds.nodata
            fill = nodata if nodata is not None else 0
            ky = kx = 1  # native pixels per grid pixel, rows and columns, where dn is not on the grid yet
            try:
                if not finer:  # read whole native pixels, then pick the one under each grid pixel centre
                    native, ri, ci = _upsample_plan(win, shape)
                    ky, kx = _repeat(ri), _repeat(ci)
                    direct = raw and ky == kx == 1 and out.flags.c_contiguous and _inside(native, ds)
                    data = (np.asarray(ds.read(1, window=native, out=out)) if direct  # GDAL decodes into out
                            else _read_native(ds, native, fill))
                    if not (ky and kx):  # not an aligned integer ratio: index each axis (columns first)
                        ky = kx = 1
                        dn = np.asarray(data.take(ci, axis=1).take(ri, axis=0))
                    else:
                        dn = data
                else:  # GDAL resamples the (fractional) native window down to the grid
                    inside = _inside(win, ds)
                    dn = ds.read(1, window=win, out_shape=shape, resampling=Resampling[self.config.resampling],
                                 boundless=not inside, fill_value=None if inside else fill)
            except rasterio.RasterioIOError as err:
                raise ReadError(
                    f"cannot read band '{asset.band}' of scene {self.spec.id} ({asset.href}): {err}; "
                    "the file may be corrupt or truncated"
                ) from err
        invalid = None
        if nodata is not None and not (nodata == 0 and dn.dtype.kind == "u" and dn.min() > 0):  # min: one cheap pass
            invalid = dn == nodata
            if not invalid.any():
                invalid = None
        if raw:  # the DN on the grid (aligned coarser bands repeated); the caller scales them
            _repeat_into(out, dn, ky, kx)
        else:  # DN -> float32 in one pass over the grid (aligned coarser bands: scaled at native size, then repeated)
            _scale_into(out, dn, ky, kx, scale, offset, invalid)
        if invalid is not None and invalid_into is not None:
            if ky != 1 or kx != 1:
                invalid = np.repeat(np.repeat(invalid, kx, axis=1), ky, axis=0)
            with self._invalid_lock:
                np.logical_or(invalid_into, invalid, out=invalid_into)
        return out

    def to_dask(self, row_edges: Sequence[int] | None = None, chunk_cols: int | None = None) -> da.Array:
        """The scene (or the rows from ``row_edges[0]`` to ``row_edges[-1]``) as a lazy dask array.

        ``row_edges`` are ascending row numbers that set the row chunks (default: 1024-row chunks).
        """
        h, w = self.shape
        edges = list(row_edges) if row_edges is not None else list(range(0, h, 1024)) + [h]
        if edges != sorted(edges) or edges[0] < 0 or edges[-1] > h or len(edges) < 2:
            raise ValueError(f"row_edges must ascend within [0, {h}], got {edges}")
        step = chunk_cols or self.config.chunk_cols
        col_edges = list(range(0, w, step)) + [w]
        name = f"{self._name}-{edges[0]}-{edges[-1]}-{len(edges)}"
        dsk: dict[Any, Any] = {}
        for b in range(len(self.bands)):
            for i, (r0, r1) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
                for j, (c0, c1) in enumerate(zip(col_edges[:-1], col_edges[1:], strict=True)):
                    dsk[(name, b, i, j)] = (_read_one, self, b, (r0, r1), (c0, c1))
        chunks = (
            (1,) * len(self.bands),
            tuple(np.diff(edges).tolist()),
            tuple(np.diff(col_edges).tolist()),
        )
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[])
        return da.Array(graph, name, chunks, dtype=np.float32)

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None,
                  cols: tuple[int, int] | None = None,
                  affine: tuple[np.ndarray, np.ndarray] | None = None,
                  valid: np.ndarray | None = None, raw: bool = False) -> np.ndarray:
        """Rows ``[start, stop)`` of every band, one band per worker thread.

        ``cols`` ``(c0, c1)`` reads only those columns (default: all); the result is then
        ``(bands, stop - start, c1 - c0)``. Columns outside the item's valid-data footprint (when
        known) are not read: they are NaN. ``out`` (float32, the result's shape) is filled in place
        when given. ``affine`` ``(multiply, add)``, one value per band: ``reflectance * multiply + add``
        (see :meth:`read_block`). ``valid`` (bool, ``(stop - start, c1 - c0)``) is set to whether every
        band has data (the same as no NaN in any band, without a pass over the floats). ``raw``: the DN
        on the grid instead, in :attr:`dn_dtype` (``affine`` does not apply; nodata pixels hold what the
        files hold, 0 outside the footprint: ``valid`` tells), for a caller that scales them with
        :meth:`dn_affine` as it copies them. Every band read has finished when this returns or raises
        (the first error is raised after the others end), so closing the source afterwards never closes
        a dataset under a read.
        """
        w0, w1 = cols if cols is not None else (0, self.shape[1])
        if not 0 <= w0 < w1 <= self.shape[1]:
            raise ValueError(f"cols must satisfy 0 <= c0 < c1 <= {self.shape[1]}, got {cols}")
        shape = (len(self.bands), stop - start, w1 - w0)
        dtype = np.dtype(np.float32)
        if raw:
            if self.dn_dtype is None:
                raise ValueError(f"scene {self.spec.id}: its bands share no 8/16-bit integer DN dtype; read "
                                 "reflectance (raw=False)")
            dtype, affine = self.dn_dtype, None
        if out is not None and (out.shape != shape or out.dtype != dtype):
            raise ValueError(f"out must be {dtype} {shape}, got {out.dtype} {out.shape}")
        if valid is not None and (valid.shape != shape[1:] or valid.dtype != np.bool_):
            raise ValueError(f"valid must be bool {shape[1:]}, got {valid.dtype} {valid.shape}")
        if self._prefetched is not None:
            got = self.take_prefetched(start, stop, affine, raw)
            if got is not None:
                got.wait_cols(w1)  # a failed prefetch raises here, as the read itself would
                data, got_valid = got.data[:, :, w0:w1], got.valid[:, w0:w1]
                if out is None:
                    out = data
                else:
                    out[...] = data
                if valid is not None:
                    valid[...] = got_valid
                return out
        return self._read(start, stop, out, (w0, w1), affine, valid, raw)

    @property
    def prefetching(self) -> bool:
        """Whether a :meth:`prefetch` is waiting to serve the next :meth:`read_rows` (read it whole then)."""
        return self._prefetched is not None

    def _read(self, start: int, stop: int, out: np.ndarray | None,
              cols: tuple[int, int] | None = None,
              affine: tuple[np.ndarray, np.ndarray] | None = None,
              valid: np.ndarray | None = None, raw: bool = False) -> np.ndarray:
        w0, w1 = cols if cols is not None else (0, self.shape[1])
        f0, f1 = self.footprint_cols(start, stop)
        c0, c1 = max(w0, f0), min(w1, f1)
        shape = (len(self.bands), stop - start, w1 - w0)
        if out is None:
            out = np.empty(shape, self.dn_dtype if raw else np.float32)
        outside = 0 if raw else np.nan
        if valid is not None:
            valid[...] = False  # outside the footprint; the footprint's columns are set below
        if c1 <= c0:
            out[...] = outside
            return out
        if c0 > w0:
            out[:, :, : c0 - w0] = outside
        if c1 < w1:
            out[:, :, c1 - w0 :] = outside
        invalid = np.zeros((stop - start, c1 - c0), bool) if valid is not None else None

        def one(b: int) -> None:
            ab = None if affine is None else (float(affine[0][b]), float(affine[1][b]))
            self.read_block(b, (start, stop), (c0, c1), out=out[b, :, c0 - w0 : c1 - w0], affine=ab,
                            invalid_into=invalid, raw=raw)

        futures = [self._executor().submit(one, b) for b in range(len(self.bands))]
        wait(futures)
        for f in futures:
            err = f.exception()
            if err is not None:
                raise err
        if valid is not None and invalid is not None:
            np.logical_not(invalid, out=valid[:, c0 - w0 : c1 - w0])
        return out

    def prefetch(self, start: int, stop: int, affine: tuple[np.ndarray, np.ndarray] | None = None,
                 raw: bool = False) -> None:
        """Start reading rows ``[start, stop)`` in the background (e.g. the next scene's first strip
        while the device still works on this one, or this scene's while its model loads); a later
        :meth:`read_rows` inside that range with the same ``affine`` (the model's folded normalisation)
        is served from it, valid mask included, without a pass over the pixels, and
        :meth:`take_prefetched` hands the rows themselves over (no copy). ``raw``: the DN (see
        :meth:`read_rows`); a read asking for the other kind is not served from it. Opening the bands
        and finding their overview levels happen there too."""
        fold = None if affine is None or raw else (np.asarray(affine[0], np.float64).copy(),
                                                   np.asarray(affine[1], np.float64).copy())
        width = self.shape[1]
        dtype = self.dn_dtype if raw else np.float32
        if dtype is None:
            raise ValueError(f"scene {self.spec.id}: its bands share no 8/16-bit integer DN dtype; prefetch "
                             "reflectance (raw=False)")
        ahead = RowsAhead(np.empty((len(self.bands), stop - start, width), dtype),
                          np.empty((stop - start, width), bool), [(0, width)])

        def read() -> None:
            self._read(start, stop, ahead.data, None, fold, ahead.valid, raw)
            ahead.publish(width)

        with self._pool_lock:
            if self._closed:
                raise ReadError(f"the reader of scene {self.spec.id} is closed; open the scene again")
            if self._ahead is None:
                self._ahead = ThreadPoolExecutor(1, thread_name_prefix="cloudmask-prefetch",
                                                 initializer=lower_thread_priority)
            ahead.future = self._ahead.submit(read)
            self._prefetched = (start, stop, "raw" if raw else fold, ahead)

    def take_prefetched(self, start: int, stop: int, affine: tuple[np.ndarray, np.ndarray] | None = None,
                        raw: bool = False) -> RowsAhead | None:
        """The prefetched rows ``[start, stop)`` (a :class:`RowsAhead` of views the caller may keep: no copy;
        perhaps still being read: ask it to ``wait_cols`` before using columns) when a :meth:`prefetch`
        covers them with the same ``affine``, else None. Drops the prefetch either way (a mismatch is read
        again)."""
        with self._pool_lock:
            found, self._prefetched = self._prefetched, None
        if found is None:
            return None
        p0, p1, kind, ahead = found
        same = _same_kind(kind, "raw" if raw else affine)
        if not (same and p0 <= start <= stop <= p1):
            ahead.settle()  # a read in flight must end before its buffer is dropped
            if not same:
                log.debug("prefetch of scene %s was read with another normalisation: reading again", self.spec.id)
            return None
        return ahead.rows(start - p0, stop - p0)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise ReadError(f"the reader of scene {self.spec.id} is closed; open the scene again")
            if self._pool is None:
                n = self.config.threads or min(len(self.bands), (os.cpu_count() or 1) + 1)
                self._pool = ThreadPoolExecutor(max(1, n), thread_name_prefix="cloudmask-read",
                                                initializer=lower_thread_priority)
            return self._pool

    def check_size(self, max_pixels: int | None = None) -> None:
        """Refuse (:class:`GridError`) a grid of more than ``max_pixels`` pixels (default
        :func:`max_grid_pixels`); no file is opened. :meth:`check_grid` also compares it with the files."""
        h, w = self.shape
        limit = max_grid_pixels() if max_pixels is None else max_pixels
        if h * w > limit:
            raise GridError(
                f"scene {self.spec.id}: its grid is {w} x {h} pixels at {abs(self.geobox.resolution.x):g} m "
                f"({h * w:.3g} pixels), more than the memory bound of {limit:.3g} pixels "
                f"(${MAX_PIXELS_ENV}); check the item's proj:shape/proj:bbox, or choose a coarser --resolution"
            )

    def check_grid(self, max_pixels: int | None = None) -> None:
        """Refuse a grid the band files cannot fill, before any pixel is read (:class:`GridError`).

        The grid comes from the item's ``proj:shape``/``proj:transform``/``proj:bbox``; a wrong or hostile
        value (``proj:shape`` 5e6 x 5e6 over 512 px files) would stream gigabytes of fill. Refused: a grid
        of more than ``max_pixels`` pixels (:meth:`check_size`), or one reaching beyond the union of the
        band files by more than two of its or their pixels and 1 % of their extent (opens each band).
        """
        self.check_size(max_pixels)
        h, w = self.shape
        boxes = []
        for asset in self.assets:
            with self._handles.checkout(asset, None) as ds:
                if ds.crs is None or CRS.from_user_input(ds.crs) != CRS.from_user_input(str(self.geobox.crs)):
                    continue  # the read says what is wrong with its CRS
                boxes.append((tuple(ds.bounds), abs(ds.res[0]), asset))
        if not boxes:
            return
        left = min(b[0][0] for b in boxes)
        bottom = min(b[0][1] for b in boxes)
        right = max(b[0][2] for b in boxes)
        top = max(b[0][3] for b in boxes)
        g = self.geobox.extent.boundingbox
        pix = max(abs(self.geobox.resolution.x), max(b[1] for b in boxes))
        tol_x = 2 * pix + 0.01 * (right - left)
        tol_y = 2 * pix + 0.01 * (top - bottom)
        if g.left < left - tol_x or g.right > right + tol_x or g.bottom < bottom - tol_y or g.top > top + tol_y:
            files = ", ".join(sorted({b[2].band for b in boxes}))
            raise GridError(
                f"scene {self.spec.id} claims a grid of {w} x {h} pixels at {abs(self.geobox.resolution.x):g} m "
                f"({g.right - g.left:.0f} x {g.top - g.bottom:.0f} m, bounds {g.left:.0f}, {g.bottom:.0f}, "
                f"{g.right:.0f}, {g.top:.0f}) but its band files ({files}) cover only "
                f"{right - left:.0f} x {top - bottom:.0f} m (bounds {left:.0f}, {bottom:.0f}, {right:.0f}, {top:.0f}); "
                "the item's proj:shape/proj:transform/proj:bbox is wrong: fix the item"
            )

    def footprint_cols(self, start: int, stop: int) -> tuple[int, int]:
        """Columns ``[c0, c1)`` of rows ``[start, stop)`` that the item's footprint touches (plus 2 px)."""
        w = self.shape[1]
        if self._footprint is None:
            return 0, w
        from shapely.geometry import box

        part = self._footprint.intersection(box(-1, start - 1, w + 1, stop + 1))
        if part.is_empty:
            return 0, 0
        minx, _, maxx, _ = part.bounds
        return max(0, int(np.floor(minx)) - 2), min(w, int(np.ceil(maxx)) + 2)

    def _pixel_footprint(self) -> Any:
        """The item's geometry in grid pixel coordinates (shapely), or None when unknown or unusable."""
        item = self.spec.item
        geom = getattr(item, "geometry", None)
        if not self.config.use_footprint or not geom:
            return None
        try:
            from odc.geo.geom import Geometry
            from shapely import affinity
            from shapely.geometry import box

            g = Geometry(geom, "EPSG:4326").to_crs(self.spec.crs).geom
            a = ~self.geobox.transform
            pix = affinity.affine_transform(g, [a.a, a.b, a.d, a.e, a.c, a.f]).buffer(1.0)
            h, w = self.shape
            if not pix.intersects(box(0, 0, w, h)):  # wrong CRS or geometry: do not trust it
                log.warning("item %s: its geometry misses its own grid; reading full rows", self.spec.id)
                return None
            return pix
        except Exception as err:  # noqa: BLE001 - a broken footprint only costs speed
            log.debug("item %s: footprint unusable (%s); reading full rows", self.spec.id, err)
            return None

    def gdal_env(self, href: str) -> dict[str, Any]:
        """The GDAL options this reader opens and reads ``href`` with (the provider profile's, the reader's,
        and for remote files the HTTP limits): for an asset read beside the bands, e.g. the SCL."""
        return dict(self._handles.remote if gdal_path(href).startswith("/vsi") else self._handles.env)

    def close(self) -> None:
        """Wait for reads in flight, then close every dataset (idempotent)."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
            ahead, self._ahead, self._prefetched = self._ahead, None, None
        if ahead is not None:  # its read uses the band pool: it must end first
            ahead.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._handles.close()

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RowWindows:
    """Row windows of a source, each pixel read once and the next window read ahead.

    ``windows`` are ``(start, stop)`` row ranges whose starts and stops never decrease; a window
    keeps the rows it shares with the previous one (copied, not read again) and reads the rest. While
    the caller works on window ``k``, a background thread reads window ``k + 1`` into the other of two
    preallocated buffers and prepares it: the valid mask (no NaN in any band), ``prepare(data)``
    in place on the new rows (e.g. the model's normalisation), then ``fill`` at invalid pixels (None:
    left as read, NaN from a :class:`RasterSource`, for callers that never use them).

    ``fold`` ``(multiply, add)`` per band: the same as ``prepare`` when that is affine; a source whose
    ``read_rows`` takes ``affine`` (:class:`RasterSource`) applies it while it scales the DN, and
    ``prepare`` is skipped (one pass over the pixels instead of three).

    ``raw`` (a source with ``dn_dtype``, e.g. :class:`RasterSource` over 16-bit files): the windows hold the
    DN on the grid, not reflectance (no pass over the pixels at all: GDAL decodes into the window);
    ``prepare``, ``fold`` and ``fill`` do not apply, and the caller scales the DN it uses with the
    source's ``dn_affine``. Ignored (reflectance) for a source without a common integer DN dtype.

    ``first_parts > 1`` (sources whose ``read_rows`` takes ``cols``, reading ahead): the first window
    is yielded at once and read in that many column parts, left to right, on the background thread;
    the caller asks for columns with :meth:`wait_cols` before it uses them, so work on the first
    columns starts before the whole first window is read.

    Iterating yields ``(data, valid)``: ``(bands, rows, width)`` float32 and ``(rows, width)`` bool
    views, valid until the next window is asked for (the buffers alternate). ``seconds`` holds the
    background ``read`` and ``prepare`` time and the caller's ``wait`` for windows not ready yet.
    """

    def __init__(self, source: Any, windows: Sequence[tuple[int, int]],
                 prepare: Callable[[np.ndarray], Any] | None = None, fill: float | None = 0.0,
                 ahead: bool = True, first_parts: int = 1,
                 fold: tuple[np.ndarray, np.ndarray] | None = None, raw: bool = False) -> None:
        self.source, self.windows, self.prepare, self.fill, self.ahead = source, list(windows), prepare, fill, ahead
        for (a0, a1), (b0, b1) in zip(self.windows[:-1], self.windows[1:], strict=True):
            if b0 < a0 or b1 < a1:
                raise ValueError(f"row windows must not go back: {(a0, a1)} then {(b0, b1)}")
        bands = len(getattr(source, "bands", ())) or None
        self._bands = bands
        self._rows = max((b - a for a, b in self.windows), default=0)
        self._buffers: list[tuple[np.ndarray, np.ndarray]] = []
        self.seconds = {"read": 0.0, "prepare": 0.0, "wait": 0.0}
        try:
            params = inspect.signature(source.read_rows).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self._takes_out = "out" in params
        self._gives_valid = "valid" in params and self._takes_out  # the source sets the valid mask itself
        #: the affine normalisation the source applies while reading (None: ``prepare`` does it)
        self.fold = fold if fold is not None and "affine" in params and self._takes_out else None
        self.first_parts = first_parts if "cols" in params and self._takes_out and bands is not None else 1
        #: windows hold the DN (the source's ``dn_dtype``; see ``raw``), not reflectance
        self.raw = bool(raw and "raw" in params and self._gives_valid and bands is not None
                        and getattr(source, "dn_dtype", None) is not None)
        if self.raw:
            self.fold, self.prepare, self.fill = None, None, None
        # the window last yielded while its columns are still being read (None: it is whole)
        self._first: RowsAhead | None = None

    def _buffer(self, k: int, bands: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        while len(self._buffers) <= k % 2:
            dtype = self.source.dn_dtype if self.raw else np.float32
            self._buffers.append((np.empty((bands, self._rows, width), dtype),
                                  np.empty((self._rows, width), bool)))
        return self._buffers[k % 2]

    def _read_kwargs(self, valid: np.ndarray) -> dict[str, Any]:
        kw: dict[str, Any] = {"raw": True} if self.raw else {} if self.fold is None else {"affine": self.fold}
        if self._gives_valid:
            kw["valid"] = valid
        return kw

    def _prepare_new(self, new_data: np.ndarray, new_valid: np.ndarray) -> None:
        """Valid mask (unless the source set it), ``prepare`` and ``fill`` on freshly read pixels (views)."""
        if not self._gives_valid:
            np.isnan(new_data.sum(axis=0), out=new_valid)  # NaN in any band -> NaN sum
            np.logical_not(new_valid, out=new_valid)
        if self.prepare is not None and self.fold is None:
            done = self.prepare(new_data)
            if isinstance(done, np.ndarray) and done is not new_data:  # prepared out of place
                new_data[...] = done
        if self.fill is not None and not new_valid.all():
            np.copyto(new_data, np.float32(self.fill), where=~new_valid)

    def _fill(self, k: int, prev: tuple[int, int, np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        """Window ``k`` into buffer ``k % 2``: rows shared with ``prev`` copied, the others read."""
        start, stop = self.windows[k]
        keep0 = start
        if prev is not None:
            p0, p1, pdata, pvalid = prev
            keep0 = max(start, min(p1, stop))  # rows [start, keep0) come from the previous window
        t0 = time.perf_counter()
        if self._takes_out and self._bands is not None:
            data, valid = self._buffer(k, self._bands, self.source.shape[1])
            data, valid = data[:, : stop - start], valid[: stop - start]
            if keep0 < stop:
                self.source.read_rows(keep0, stop, out=data[:, keep0 - start :],
                                      **self._read_kwargs(valid[keep0 - start :]))
        else:
            new = self.source.read_rows(keep0, stop) if keep0 < stop else None
            width = new.shape[2] if new is not None else prev[2].shape[2]  # type: ignore[index]
            bands = new.shape[0] if new is not None else prev[2].shape[0]  # type: ignore[index]
            data, valid = self._buffer(k, bands, width)
            data, valid = data[:, : stop - start], valid[: stop - start]
            if new is not None:
                data[:, keep0 - start :] = new
        if prev is not None and keep0 > start:
            p0, _, pdata, pvalid = prev
            data[:, : keep0 - start] = pdata[:, start - p0 : keep0 - p0]
            valid[: keep0 - start] = pvalid[start - p0 : keep0 - p0]
        t1 = time.perf_counter()
        if keep0 < stop:
            self._prepare_new(data[:, keep0 - start :], valid[keep0 - start :])
        self.seconds["read"] += t1 - t0
        self.seconds["prepare"] += time.perf_counter() - t1
        return data, valid

    def _adopt_prefetched(self) -> RowsAhead | None:
        """Window 0's rows as the source prefetched them (``take_prefetched``), waited for, prepared and used
        in place: the prefetch's arrays become the window's buffer (no copy: a fresh 100 MB buffer costs
        more to fault in than to fill), or None."""
        take = getattr(self.source, "take_prefetched", None)
        if take is None or not (self._takes_out and self._bands is not None):
            return None
        start, stop = self.windows[0]
        ahead: RowsAhead | None = take(start, stop, self.fold, raw=self.raw)
        if ahead is None:
            return None
        ahead.wait_cols(ahead.data.shape[2])  # a failed prefetch raises here, as the read itself would
        if ahead.data.shape != (self._bands, stop - start, self.source.shape[1]):  # pragma: no cover
            return None  # another width: read the window as any other
        if not self._buffers and stop - start == self._rows and ahead.data.flags.c_contiguous:
            self._buffers.append((ahead.data, ahead.valid))  # window 0's buffer from now on
        self._prepare_new(ahead.data, ahead.valid)
        return ahead

    def _fill_first_in_parts(self, ahead: RowsAhead) -> None:
        """Window 0 into ``ahead`` column part by column part, publishing each as it is ready."""
        start, stop = self.windows[0]
        for c0, c1 in ahead.parts:
            t0 = time.perf_counter()
            self.source.read_rows(start, stop, out=ahead.data[:, :, c0:c1], cols=(c0, c1),
                                  **self._read_kwargs(ahead.valid[:, c0:c1]))
            t1 = time.perf_counter()
            self._prepare_new(ahead.data[:, :, c0:c1], ahead.valid[:, c0:c1])
            self.seconds["read"] += t1 - t0
            self.seconds["prepare"] += time.perf_counter() - t1
            ahead.publish(c1)

    def wait_cols(self, stop: int) -> None:
        """Block until columns ``[0, stop)`` of the window last yielded are ready (see ``first_parts``).

        Returns at once for whole windows; raises the read's error if reading the window failed.
        """
        if self._first is None:
            return
        t0 = time.perf_counter()
        try:
            self._first.wait_cols(stop)
        finally:
            self.seconds["wait"] += time.perf_counter() - t0

    def _first_in_parts(self, pool: ThreadPoolExecutor | None) -> RowsAhead | None:
        """Window 0 to be yielded at once and read in ``first_parts`` column parts in the background (its
        progress), or None: read it as any window."""
        if pool is None or self.first_parts <= 1 or getattr(self.source, "prefetching", False):
            return None
        start, stop = self.windows[0]
        data, valid = self._buffer(0, self._bands or 0, self.source.shape[1])
        return RowsAhead(data[:, : stop - start], valid[: stop - start], column_parts(data.shape[2], self.first_parts))

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self.windows:
            return
        pool = (ThreadPoolExecutor(1, thread_name_prefix="cloudmask-rows", initializer=lower_thread_priority)
                if self.ahead else None)
        try:
            nxt: Future[tuple[np.ndarray, np.ndarray]] | None = None
            k0 = 0
            whole = self._adopt_prefetched()
            first = None if whole is not None else self._first_in_parts(pool)
            if first is not None:  # yielded at once, its columns read in parts here (see wait_cols)
                assert pool is not None
                cur = (first.data, first.valid)

                def first_then_next() -> tuple[np.ndarray, np.ndarray]:
                    self._fill_first_in_parts(first)
                    if len(self.windows) > 1:
                        return self._fill(1, (*self.windows[0], *cur))
                    return cur

                nxt = pool.submit(first_then_next)
                first.future = nxt  # a failed part read ends it: wait_cols raises that error
                self._first = first
                yield cur
                k0 = 1
                t0 = time.perf_counter()
                try:
                    nxt_cur = nxt.result()
                finally:
                    self._first = None
                self.seconds["wait"] += time.perf_counter() - t0
                if len(self.windows) == 1:
                    return
                cur = nxt_cur
            elif whole is not None:
                cur = (whole.data, whole.valid)
            else:
                cur = self._fill(0, None)
            for k in range(k0, len(self.windows)):
                if k > k0:
                    assert nxt is not None
                    t0 = time.perf_counter()
                    cur = nxt.result()
                    self.seconds["wait"] += time.perf_counter() - t0
                if k + 1 < len(self.windows):
                    prev = (*self.windows[k], *cur)
                    if pool is not None:
                        nxt = pool.submit(self._fill, k + 1, prev)
                    else:
                        done: Future[tuple[np.ndarray, np.ndarray]] = Future()
                        nxt = done
                        yield cur
                        done.set_result(self._fill(k + 1, prev))
                        continue
                yield cur
        finally:
            if pool is not None:  # a read in flight ends before the source may be closed
                pool.shutdown(wait=True, cancel_futures=True)


def _read_one(src: RasterSource, band: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    return src.read_block(band, rows, cols)[None]
