"""Atomic output files: nothing appears at a final path until it is complete.

Every output (mask COG, sidecar, STAC item, catalogue, summary, quicklook, journal) is written to a
hidden temporary beside its final path and renamed into place; on any error the temporary is removed
and the error becomes a :class:`~cloudmask.errors.WriteError` (exit 7) naming the path and the fix
("no space left on device" says so). :data:`TEMP_PATTERNS` recognises every temporary this package and
GDAL (``*.ovr.tmp`` while overviews are built) leave behind after a kill, so that a later run can sweep
the ones whose process is dead.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import WriteError
from .interrupt import check_publish

#: Temporaries of this package (group 1: the pid that wrote them), GDAL's overview temporaries included.
TEMP_PATTERNS = (
    re.compile(r"^\..+\.(?:blocks|cog)-(\d+)-[0-9a-f]+\.tmp\.tif(?:\.ovr\.tmp|\.aux\.xml|\.msk)?$"),
    re.compile(r"^\..+\.(\d+)(?:-[0-9a-f]+)?\.tmp$"),
)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def temp_path(final: Path) -> Path:
    """A hidden temporary beside ``final`` that :data:`TEMP_PATTERNS` recognises."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def is_no_space(err: BaseException) -> bool:
    """True when ``err`` (or what it wraps) says the disk or quota is full."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        if "no space left on device" in str(e).lower() or "disk quota exceeded" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


#: Free space (bytes) under which a failed write is taken for a full disk (GDAL does not always say so).
NEARLY_FULL = 1 << 20


def _nearly_full(path: Path | str) -> bool:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < NEARLY_FULL
    except OSError:
        return False


def write_error(err: BaseException, path: Path | str) -> WriteError:
    """A :class:`WriteError` for a failure writing ``path``, saying what to do."""
    if is_no_space(err) or _nearly_full(path):
        return WriteError(f"no space left on device while writing {path}; free some space or choose another "
                          "output directory (--out) and run again: finished outputs are kept")
    return WriteError(f"cannot write {path}: {err}; check the directory exists and is writable")


@contextmanager
def atomic_path(final: Path | str) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``final`` when the block succeeds, remove it otherwise."""
    final = Path(final)
    tmp = temp_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        check_publish()  # a job task whose lease is gone publishes nothing
        os.replace(tmp, final)
    except OSError as err:
        raise write_error(err, final) from err
    finally:
        tmp.unlink(missing_ok=True)


def write_text(final: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_path(final) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(final)


def write_bytes(final: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically."""
    with atomic_path(final) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(final)
