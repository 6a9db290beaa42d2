"""What a job has done: the output catalogue on disk, an append-only journal, and a lock.

* A scene is **done** when ``OUT/items/<safe id>.json`` exists, names the scene as its source, and the
  mask it points at exists with the size and checksum the item records. Nothing else counts, so a
  run killed at any moment leaves no half-done scene marked done (masks and items are renamed into
  place only when complete).
* ``OUT/journal.jsonl`` records run starts and ends, scene starts, retries, failures, completions
  and pushes, one JSON object per line, appended only (``O_APPEND``, one ``write`` per line).
* ``OUT/.cloudmask.lock`` is held with ``fcntl.flock`` for the whole run and holds the holder's pid,
  host and start time, so a second run of the job (or any job writing to ``OUT``) stops or waits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import JobError
from ..outputs import file_checksum
from ..pipeline import mask_paths, safe_name

log = logging.getLogger(__name__)

LOCK_NAME = ".cloudmask.lock"
JOURNAL_NAME = "journal.jsonl"

#: Temporaries written by cloudmask: CogSink ``.<name>.<tag>-<pid>-<hex>.tmp.tif``, items/catalogue
#: ``.<name>.<pid>.tmp``; group 1 is the writer's pid.
_TMP_PATTERNS = (
    re.compile(r"^\..+\.(?:blocks|cog)-(\d+)-[0-9a-f]+\.tmp\.tif$"),
    re.compile(r"^\..+\.(\d+)\.tmp$"),
)


class JobLockedError(JobError):
    """Another run holds the job's lock (exit code 75, EX_TEMPFAIL: try again later)."""

    exit_code = 75


class SceneFailuresError(JobError):
    """The run finished but some scenes failed (exit code 8)."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ lock


class JobLock:
    """``fcntl.flock`` on ``OUT/.cloudmask.lock``; the file holds the holder's pid/host/time as JSON.

    ``acquire(wait=False)`` raises :class:`JobLockedError` naming the holder when the lock is taken;
    ``wait=True`` blocks until it is free (``timeout`` seconds at most, ``None``: forever).
    The kernel drops the lock when the holder dies, so a killed run never leaves the job locked.
    """

    def __init__(self, out_dir: Path, job: str = "") -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.job = job
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.path.read_text() or "{}"))
        except (OSError, ValueError):
            return {}

    def _describe(self) -> str:
        h = self.holder()
        if not h:
            return "another process"
        return f"pid {h.get('pid')} on {h.get('host')} (job {h.get('job')!r}, since {h.get('since')})"

    def acquire(self, wait: bool = False, timeout: float | None = None, poll: float = 0.5) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise JobError(f"cannot lock {self.path}: {err}") from err
                if not wait or (deadline is not None and time.monotonic() >= deadline):
                    os.close(fd)
                    raise JobLockedError(
                        f"another run of this job is in progress ({self._describe()}; lock {self.path}); "
                        "nothing done. Run again later, or pass --wait to wait for it"
                    ) from None
                if not told:
                    log.warning("waiting for %s to finish (lock %s)", self._describe(), self.path)
                    told = True
                time.sleep(poll)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "job": self.job}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------- journal


class Journal:
    """``OUT/journal.jsonl``: one JSON event per line, appended with a single ``write``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME

    def append(self, event: str, **fields: Any) -> None:
        doc = {"time": now_iso(), "event": event, **fields}
        line = (json.dumps(doc, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self) -> Iterator[dict[str, Any]]:
        """Every readable event, oldest first (a torn last line from a killed writer is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    yield doc

    def last_by_scene(self, kinds: tuple[str, ...] = ("started", "done", "failed")) -> dict[str, dict[str, Any]]:
        """The latest event of ``kinds`` per scene id."""
        out: dict[str, dict[str, Any]] = {}
        for ev in self.events():
            if ev.get("event") in kinds and "scene" in ev:
                out[str(ev["scene"])] = ev
        return out

    def pushed(self) -> dict[str, str]:
        """Scene id -> version (see :func:`cloudmask.jobs.push.item_version`) last pushed to a STAC API."""
        return {
            str(ev["scene"]): str(ev.get("version"))
            for ev in self.events()
            if ev.get("event") == "pushed" and "scene" in ev
        }


# ------------------------------------------------------------------------------------------- done-ness


@dataclass
class DoneCheck:
    """Whether a scene's outputs are complete, and if not, why."""

    done: bool
    reason: str = ""
    item_path: Path | None = None


def check_done(out_dir: Path, scene_id: str, verify: bool = True) -> DoneCheck:
    """Is ``scene_id`` done in ``out_dir``? (item present and names it, mask present, checksum matches)."""
    item_path = mask_paths(Path(out_dir), scene_id)["item"]
    if not item_path.is_file():
        return DoneCheck(False, "no output item")
    try:
        doc = json.loads(item_path.read_text())
    except (OSError, ValueError) as err:
        return DoneCheck(False, f"unreadable output item ({err})", item_path)
    src = doc.get("properties", {}).get("cloudmask:source_id")
    if src is not None and src != scene_id:
        return DoneCheck(False, f"output item {item_path.name} belongs to scene {src!r} (same file name)", item_path)
    asset = doc.get("assets", {}).get("mask")
    if not asset:
        return DoneCheck(False, "output item has no mask asset", item_path)
    mask = (item_path.parent / asset["href"]).resolve()
    if not mask.is_file():
        return DoneCheck(False, f"mask {mask.name} is missing", item_path)
    size = asset.get("file:size")
    if size is not None and mask.stat().st_size != size:
        return DoneCheck(False, f"mask {mask.name} has {mask.stat().st_size} bytes, item says {size}", item_path)
    if verify and asset.get("file:checksum") and file_checksum(mask) != asset["file:checksum"]:
        return DoneCheck(False, f"mask {mask.name} does not match the item's checksum", item_path)
    return DoneCheck(True, "", item_path)


def is_collision(check: DoneCheck) -> bool:
    return "belongs to scene" in check.reason


# ------------------------------------------------------------------------------------------ temporaries


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(out_dir: Path, max_age_s: float = 24 * 3600.0) -> list[Path]:
    """Temporary files under ``out_dir`` (and ``out_dir/items``) left by dead writers.

    A file counts as stale when its writer's pid (in its name) is not alive on this host, or is this
    process (nothing of ours is in flight when a run starts), or when it is older than ``max_age_s``
    (pid reuse, or writers on other hosts of a cluster). Call only while holding the job lock.
    """
    out: list[Path] = []
    now = time.time()
    for d in (Path(out_dir), Path(out_dir) / "items"):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not p.name.startswith("."):
                continue
            for pat in _TMP_PATTERNS:
                m = pat.match(p.name)
                if m is None:
                    continue
                pid = int(m.group(1))
                try:
                    age = now - p.stat().st_mtime
                except FileNotFoundError:
                    break
                if pid == os.getpid() or not _pid_alive(pid) or age > max_age_s:
                    out.append(p)
                break
    return out


def clean_temporaries(out_dir: Path, max_age_s: float = 24 * 3600.0) -> list[Path]:
    """Remove :func:`stale_temporaries`; returns what was removed."""
    removed = []
    for p in stale_temporaries(out_dir, max_age_s):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d stale temporary file(s) from a killed run: %s",
                 len(removed), ", ".join(p.name for p in removed[:5]))
    return removed


__all__ = [
    "DoneCheck",
    "JobLock",
    "JobLockedError",
    "Journal",
    "SceneFailuresError",
    "check_done",
    "clean_temporaries",
    "safe_name",
    "stale_temporaries",
]
