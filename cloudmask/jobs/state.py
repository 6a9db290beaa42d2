"""What a job has done: the output catalogue on disk, an append-only journal, and a lock.

* A scene is **done** when ``OUT/items/<safe id>.json`` exists, names the scene as its source, and the
  mask it points at exists with the size and checksum the item records. Nothing else counts, so a
  run killed at any moment leaves no half-done scene marked done (masks and items are renamed into
  place only when complete).
* ``OUT/journal.jsonl`` records run starts and ends, scene starts, retries, failures, completions
  and pushes, one JSON object per line, appended only (``O_APPEND``, one ``write`` per line).
* ``OUT/.cloudmask.lock`` is held (``filelock``, an ``flock``) for the whole run, and
  ``OUT/.cloudmask.lock.json`` names the holder's pid, host and start time meanwhile, so a second
  run of the job (or any job writing to ``OUT``) stops or waits, saying who holds it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock

from ..atomic import TEMP_PATTERNS
from ..errors import ConfigError, JobError, JobLockedError, LeaseLostError, SceneFailuresError
from ..layout import OutputPaths, safe_name
from ..output_catalog import file_checksum, item_percentages, load_items
from ..recipe import ITEM_KEY as RECIPE_KEY

log = logging.getLogger(__name__)

LOCK_NAME = ".cloudmask.lock"
HOLDER_NAME = ".cloudmask.lock.json"
JOURNAL_NAME = "journal.jsonl"



def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ lock


class JobLock:
    """The job's lock: ``filelock`` (``flock``) on ``OUT/.cloudmask.lock``; the holder's pid, host, job and
    start time are in ``OUT/.cloudmask.lock.json`` while it holds the lock.

    ``acquire(wait=False)`` raises :class:`JobLockedError` naming the holder when the lock is taken;
    ``wait=True`` blocks until it is free (``timeout`` seconds at most, ``None``: forever).
    The kernel drops the lock when the holder dies, so a killed run never leaves the job locked.
    """

    def __init__(self, out_dir: Path, job: str = "", run: str = "") -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.info_path = Path(out_dir) / HOLDER_NAME
        self.job = job
        self.run = run  # the run's token: its tasks' lease (check_lease)
        self._lock: filelock.BaseFileLock | None = None

    def holder(self) -> dict[str, Any]:
        """Who holds (or, after a crash, last held) the lock; ``{}`` when nobody said."""
        try:
            return dict(json.loads(self.info_path.read_text() or "{}"))
        except (OSError, ValueError, TypeError):
            return {}

    def running(self) -> dict[str, Any] | None:
        """The holder when another process holds the lock now, else ``None``."""
        if not self.path.exists():
            return None
        probe = filelock.FileLock(str(self.path))
        try:
            probe.acquire(timeout=0)
        except filelock.Timeout:
            return self.holder() or {"pid": "?"}
        except OSError:
            return None
        probe.release()
        return None

    def _describe(self) -> str:
        h = self.holder()
        if not h:
            return "another process"
        return f"pid {h.get('pid')} on {h.get('host')} (job {h.get('job')!r}, since {h.get('since')})"

    def acquire(self, wait: bool = False, timeout: float | None = None, poll: float = 0.5) -> JobLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.path))
        try:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                if not wait:
                    raise
                log.warning("waiting for %s to finish (lock %s)", self._describe(), self.path)
                lock.acquire(timeout=-1 if timeout is None else timeout, poll_interval=poll)
        except filelock.Timeout:
            raise JobLockedError(
                f"another run of this job is in progress ({self._describe()}; lock {self.path}); "
                "nothing done. Run again later, or pass --wait to wait for it"
            ) from None
        except OSError as err:
            raise JobError(f"cannot lock {self.path}: {err}; is the output directory writable?") from err
        self._lock = lock
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso(), "job": self.job, "run": self.run}
        tmp = self.info_path.with_name(f"{self.info_path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(info) + "\n")
            os.replace(tmp, self.info_path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            self.release()
            raise JobError(f"cannot write {self.info_path}: {err}") from err
        return self

    def revoke(self) -> None:
        """End the lease of this run's tasks (they publish nothing more) while still holding the lock."""
        if self._lock is not None:
            self.info_path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.info_path.unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_lease(out_dir: Path | str, run: str) -> None:
    """Raise :class:`LeaseLostError` unless run ``run`` still holds the job's lock on ``out_dir``.

    What a job task checks before publishing (:func:`cloudmask.interrupt.lease`): a dask worker whose
    driver or scheduler is gone (the lock released, or held by a later run) must not rename a mask
    into place. The holder file names the run; it is removed when the run ends or gives up.
    """
    holder = JobLock(Path(out_dir)).holder()
    if holder.get("run") != run:
        raise LeaseLostError(f"run {run} no longer holds the job's lock on {out_dir} (its driver or scheduler is "
                             "gone): this scene is not published; the next run of the job does it")


# --------------------------------------------------------------------------------------------- journal


class Journal:
    """``OUT/journal.jsonl``: one JSON event per line, appended with a single ``write``."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / JOURNAL_NAME

    def _not_a_file(self) -> ConfigError:
        return ConfigError(f"the job journal {self.path} is a directory, not a file; move it away "
                           f"(mv {self.path} {self.path}.bak) and run again")

    def append(self, event: str, **fields: Any) -> None:
        doc = {"time": now_iso(), "event": event, **fields}
        line = (json.dumps(doc, default=str) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise self._not_a_file() from None
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self) -> Iterator[dict[str, Any]]:
        """Every readable event, oldest first (a torn last line from a killed writer is skipped)."""
        if self.path.is_dir():
            raise self._not_a_file()
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


def check_done(out_dir: Path, scene_id: str, verify: bool = True, recipe: str | None = None,
               outputs: Sequence[str] = ()) -> DoneCheck:
    """Is ``scene_id`` done in ``out_dir``? The one done rule of jobs and ``run --skip-existing``: the item
    is present and names the scene, the mask is present with the item's size and checksum; given
    ``recipe`` (:func:`cloudmask.pipeline.scene_fingerprint`), the item was made with it (a mask made
    with another model, classes, post-processing, resolution or probabilities setting is not done);
    every asset named in ``outputs`` (``"quicklook"``, ``"probabilities"``) is in the item and on disk."""
    item_path = OutputPaths.for_scene(out_dir, scene_id).item
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
    props = doc.get("properties", {})
    if recipe is not None and props.get(RECIPE_KEY) != recipe:
        return DoneCheck(False, "mask made with other settings (model, classes, post-processing, resolution or "
                         "probabilities)" if props.get(RECIPE_KEY) else "mask made before its settings were "
                         "recorded", item_path)
    for name in outputs:
        if name == "quicklook" and props.get("cloudmask:quicklook_error"):
            continue  # it cannot be made for this scene (said when the mask was made)
        extra = doc.get("assets", {}).get(name)
        if not extra or not (item_path.parent / extra["href"]).resolve().is_file():
            return DoneCheck(False, f"its {name} is missing", item_path)
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
            for pat in TEMP_PATTERNS:
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


# ------------------------------------------------------------------------------------------- catalogue


def catalogue_rows(out: Path) -> list[dict[str, Any]]:
    """One row per mask in the output catalogue (all runs)."""
    rows = []
    for it in load_items(out):
        p = it.properties
        rows.append({
            "scene": p.get("cloudmask:source_id", it.id), "status": "done",
            **item_percentages(it),  # classes in percent of the valid pixels, nodata of all pixels
            "seconds": p.get("cloudmask:seconds"), "mask": str(out / it.assets["mask"].href.removeprefix("../")),
        })
    return rows


__all__ = [
    "DoneCheck",
    "JobLock",
    "JobLockedError",
    "Journal",
    "SceneFailuresError",
    "catalogue_rows",
    "check_done",
    "check_lease",
    "clean_temporaries",
    "safe_name",
    "stale_temporaries",
]
