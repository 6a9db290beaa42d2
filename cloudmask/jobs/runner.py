"""Run a job: search, skip what is done, mask the rest (retrying, isolating failures), catalogue, push.

The unit of work is :func:`process_scene`: a plain function of a STAC item dict and picklable
:class:`TaskSettings`, run in this process (``concurrency`` threads) or as a dask task on a cluster
(:mod:`cloudmask.jobs.distributed`). It writes the mask into the output directory (atomically, see
:class:`~cloudmask.writer.CogSink`) and returns a :class:`SceneOutcome` with the mask's STAC item;
only the driver (:func:`run_job`) writes items, the journal, the catalogue and the summary.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac

from .. import __version__
from ..errors import CatalogUnreachableError, CloudmaskError, JobError, ReadError, WriteError
from ..models import ModelCard
from ..pipeline import safe_name
from ..runtime import Runner, make_runners
from .spec import JobSpec, RetryPolicy
from .state import (
    JobLock,
    Journal,
    SceneFailuresError,
    check_done,
    clean_temporaries,
    is_collision,
    now_iso,
)

log = logging.getLogger(__name__)

#: Failures worth another attempt: remote reads, catalogue hiccups, I/O errors.
TRANSIENT: tuple[type[BaseException], ...] = (ReadError, CatalogUnreachableError, WriteError, OSError)
#: Backends whose runners must not be shared by concurrent scenes.
SERIAL_BACKENDS = frozenset({"metis"})
SUMMARY_COLUMNS = ("scene", "status", "cloud", "shadow", "clear", "nodata", "seconds", "attempts", "mask", "error")


# ----------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TaskSettings:
    """What a worker needs to mask one scene (picklable; paths as strings)."""

    out_dir: str
    model: str = "auto"
    backend: str = "onnxruntime"
    resolution: float | None = None
    profile: str | None = None
    margin: int = 26
    probabilities: bool = False
    quicklook: bool = False
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    emulated_latency: float = 0.0

    @classmethod
    def from_spec(cls, spec: JobSpec) -> TaskSettings:
        return cls(
            out_dir=str(spec.output), model=spec.model, backend=spec.backend, resolution=spec.resolution,
            profile=spec.profile, margin=spec.margin, probabilities=spec.probabilities,
            quicklook=spec.quicklook, retries=spec.retries, emulated_latency=spec.emulated_latency,
        )


@dataclass
class SceneOutcome:
    """The result of one scene: its mask item (as a dict) or the error, and every failed attempt."""

    scene: str
    ok: bool
    item: dict[str, Any] | None = None
    row: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    host: str = ""
    pid: int = 0
    loads: dict[str, int] = field(default_factory=dict)  # model loads of the process that ran it


# ---------------------------------------------------------------------------------- runners, cached

_RUNNERS: dict[tuple[Any, ...], Sequence[Runner]] = {}
_RUNNER_LOCKS: dict[tuple[Any, ...], threading.Lock] = {}
_CACHE_LOCK = threading.Lock()
#: How many times each (model, backend) was loaded in this process (once, unless the cache was cleared).
LOADS: dict[str, int] = {}


def _key(card: ModelCard, backend: str, latency: float) -> tuple[Any, ...]:
    return (card.name, str(card.onnx_path), backend, float(latency))


def cached_runners(card: ModelCard, backend: str, latency: float = 0.0) -> Sequence[Runner]:
    """This process's runners for ``card`` on ``backend``, made on first use (one model load per process)."""
    key = _key(card, backend, latency)
    with _CACHE_LOCK:
        runs = _RUNNERS.get(key)
        if runs is None:
            runs = make_runners(card, backend, latency_s=latency)
            _RUNNERS[key] = runs
            _RUNNER_LOCKS[key] = threading.Lock()
            name = f"{card.name}@{backend}"
            LOADS[name] = LOADS.get(name, 0) + 1
            log.info("loaded model %s on %s in process %d", card.name, backend, os.getpid())
        return runs


def clear_runner_cache() -> None:
    """Close and forget every cached runner of this process."""
    with _CACHE_LOCK:
        for runs in _RUNNERS.values():
            for r in runs:
                with contextlib.suppress(Exception):
                    r.close()
        _RUNNERS.clear()
        _RUNNER_LOCKS.clear()


def runner_loads() -> dict[str, int]:
    """``LOADS`` of this process (used through ``client.run`` to check each worker loaded once)."""
    return dict(LOADS)


def _backend_version(backend: str) -> str:
    if backend == "onnxruntime":
        try:
            import onnxruntime

            return str(onnxruntime.__version__)
        except ImportError:  # pragma: no cover - declared dependency
            return ""
    return ""


# ------------------------------------------------------------------------------------ one scene


def process_scene(item: Mapping[str, Any], settings: TaskSettings) -> SceneOutcome:
    """Mask one scene, retrying transient failures; never raises for a scene's own failure."""
    from ..outputs import mask_item
    from ..pipeline import choose_model, mask_scene_spec
    from ..profiles import scene_spec
    from ..stream import StreamConfig

    scene = str(item.get("id"))
    t0 = time.perf_counter()
    outcome = SceneOutcome(scene=scene, ok=False, host=socket.gethostname(), pid=os.getpid())
    policy = settings.retries
    attempt = 0
    while True:
        attempt += 1
        try:
            spec = scene_spec(pystac.Item.from_dict(dict(item)), settings.profile)
            card = choose_model(settings.model, spec)
            runs = cached_runners(card, settings.backend, settings.emulated_latency)
            stream = StreamConfig(margin=settings.margin, probabilities=settings.probabilities)
            serial = _RUNNER_LOCKS[_key(card, settings.backend, settings.emulated_latency)]
            if settings.backend in SERIAL_BACKENDS:
                serial.acquire()
            try:
                res = mask_scene_spec(spec, Path(settings.out_dir), card, runners=runs, stream=stream,
                                      resolution=settings.resolution)
            finally:
                if settings.backend in SERIAL_BACKENDS:
                    serial.release()
            res.extra.update(backend=settings.backend, backend_version=_backend_version(settings.backend))
            if settings.quicklook:
                from ..quicklook import quicklook_for_result

                try:
                    quicklook_for_result(spec, res)
                except Exception as err:  # noqa: BLE001 - a quicklook is a nicety
                    log.warning("no quicklook for %s: %s", scene, err)
            doc = mask_item(spec, res, card).to_dict(include_self_link=False, transform_hrefs=False)
            outcome.ok, outcome.item, outcome.row = True, doc, res.row()
            break
        except TRANSIENT as err:
            msg = _describe(err)
            if attempt > policy.count:
                outcome.error, outcome.error_type = msg, type(err).__name__
                break
            delay = policy.delay(attempt)
            outcome.attempts.append({"attempt": attempt, "error": msg, "retry_in_s": delay})
            log.warning("scene %s attempt %d failed (%s); retrying in %.1f s", scene, attempt, msg, delay)
            time.sleep(delay)
        except Exception as err:  # noqa: BLE001 - a failing scene is isolated, not fatal
            outcome.error, outcome.error_type = _describe(err), type(err).__name__
            if not isinstance(err, CloudmaskError):
                log.debug("scene %s failed", scene, exc_info=True)
            break
    outcome.seconds = time.perf_counter() - t0
    outcome.loads = runner_loads()
    return outcome


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if isinstance(err, CloudmaskError) else f"{type(err).__name__}: {text}"


# ------------------------------------------------------------------------------------------ search


def search_items(spec: JobSpec, now: datetime | None = None) -> list[pystac.Item]:
    """The job's scenes (retrying an unreachable catalogue per the spec's retry policy), unique by id."""
    from ..catalog import search

    attempt = 0
    while True:
        attempt += 1
        try:
            items = search(spec.stac, collection=spec.collection, bbox=spec.bbox, aoi=spec.aoi,
                           datetime=spec.search_datetime(now), max_cloud=spec.max_cloud,
                           min_cloud=spec.min_cloud, limit=spec.limit)
            break
        except (CatalogUnreachableError, OSError) as err:
            if attempt > spec.retries.count:
                raise
            delay = spec.retries.delay(attempt)
            log.warning("catalogue search failed (%s); retrying in %.1f s", err, delay)
            time.sleep(delay)
    seen: set[str] = set()
    unique = []
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            unique.append(it)
    return unique


def _item_payload(item: pystac.Item) -> dict[str, Any]:
    """A self-contained dict of ``item`` for a worker: absolute asset hrefs, self link kept."""
    clone = item.clone()
    self_href = item.get_self_href()
    if self_href:
        for asset in clone.assets.values():
            asset.href = asset.get_absolute_href() or asset.href
    doc = clone.to_dict(include_self_link=True, transform_hrefs=False)
    if self_href and not any(lk.get("rel") == "self" for lk in doc.get("links", [])):
        doc.setdefault("links", []).append({"rel": "self", "href": self_href, "type": "application/geo+json"})
    return doc


# --------------------------------------------------------------------------------------------- run


@dataclass
class JobReport:
    """What a run did."""

    job: str
    out_dir: Path
    found: int = 0
    skipped: int = 0
    processed: list[SceneOutcome] = field(default_factory=list)
    failed: list[SceneOutcome] = field(default_factory=list)
    removed_temporaries: int = 0
    pushed: int = 0
    push_failed: dict[str, str] = field(default_factory=dict)
    push_to: str | None = None
    journal: Path | None = None
    seconds: float = 0.0
    summary_paths: tuple[Path, ...] = ()

    def raise_for_failures(self) -> None:
        """Raise :class:`SceneFailuresError` if scenes failed, :class:`JobError` if only the push failed."""
        if self.failed:
            names = ", ".join(o.scene for o in self.failed[:5]) + (" ..." if len(self.failed) > 5 else "")
            raise SceneFailuresError(
                f"{len(self.failed)} of {self.found} scene(s) failed ({names}); the others are done. "
                f"Errors are in {self.journal} and {self.out_dir / 'summary.csv'}; the next run retries them"
            )
        if self.push_failed:
            raise JobError(
                f"all scenes are done but {len(self.push_failed)} item(s) could not be pushed to {self.push_to} "
                f"({next(iter(self.push_failed.values()))}); the next run pushes them"
            )

    @property
    def rows(self) -> list[dict[str, Any]]:
        """This run's scenes, one summary row each."""
        return [_row(o) for o in self.processed + self.failed]

    def line(self) -> str:
        return (
            f"job {self.job}: {self.found} scene(s) found, {self.skipped} already done, "
            f"{len(self.processed)} masked, {len(self.failed)} failed in {self.seconds:.1f} s"
        )


def _row(o: SceneOutcome) -> dict[str, Any]:
    base: dict[str, Any] = {"scene": o.scene, "status": "done" if o.ok else "failed",
                            "attempts": len(o.attempts) + 1}
    if o.ok and o.row:
        base.update({k: o.row.get(k) for k in ("cloud", "shadow", "clear", "nodata", "seconds", "mask")})
    else:
        base.update({"seconds": round(o.seconds, 2), "error": o.error})
    return base


Executor = Callable[[list[dict[str, Any]], TaskSettings], Iterator[SceneOutcome]]


def _local_executor(concurrency: int) -> Executor:
    def run(payloads: list[dict[str, Any]], settings: TaskSettings) -> Iterator[SceneOutcome]:
        if concurrency <= 1 or len(payloads) <= 1:
            for p in payloads:
                yield process_scene(p, settings)
            return
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cloudmask-scene") as pool:
            futures = [pool.submit(process_scene, p, settings) for p in payloads]
            for fut in as_completed(futures):
                yield fut.result()

    return run


def run_job(
    spec: JobSpec,
    *,
    wait: bool = False,
    wait_timeout: float | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    now: datetime | None = None,
    on_outcome: Callable[[SceneOutcome], None] | None = None,
    raise_on_failure: bool = True,
) -> JobReport:
    """Run ``spec`` once: process the scenes not done yet; raise :class:`SceneFailuresError` if any failed.

    ``scheduler`` (``tcp://host:port``) runs scenes as tasks on an existing dask cluster, ``workers``
    starts a local one with that many worker processes; neither: this process, ``spec.concurrency``
    scenes at a time. Holds ``OUT/.cloudmask.lock`` throughout (``wait``: wait for another run).
    """
    t0 = time.perf_counter()
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    lock = JobLock(out, spec.name).acquire(wait=wait, timeout=wait_timeout)
    journal = Journal(out)
    report = JobReport(job=spec.name, out_dir=out, push_to=spec.push_to, journal=journal.path)
    run_id = uuid.uuid4().hex[:12]
    try:
        report.removed_temporaries = len(clean_temporaries(out))
        scheduler = scheduler or spec.scheduler
        journal.append("run-start", run=run_id, pid=os.getpid(), host=socket.gethostname(),
                       spec=str(spec.source or ""), datetime=spec.search_datetime(now), version=__version__,
                       mode="dask" if (scheduler or workers) else "local",
                       removed_temporaries=report.removed_temporaries)
        if any((out / "items").glob("*.json")):
            _refresh_catalog(out)  # repair a catalogue a killed run did not refresh
        items = search_items(spec, now)
        report.found = len(items)
        pending: list[pystac.Item] = []
        claimed: dict[str, str] = {}
        for it in items:
            check = check_done(out, it.id)
            stem = safe_name(it.id)
            if check.done:
                report.skipped += 1
            elif is_collision(check) or stem in claimed:
                other = claimed.get(stem, "an earlier scene")
                msg = (f"scene {it.id!r} gives the output name {stem!r} of {other!r}: {check.reason or 'same name'}; "
                       "rename one of the items or use separate output directories")
                o = SceneOutcome(scene=it.id, ok=False, error=msg, error_type="JobError")
                report.failed.append(o)
                journal.append("failed", run=run_id, scene=it.id, error=msg, error_type="JobError")
            else:
                claimed[stem] = it.id
                pending.append(it)
        log.info("job %s: %d scene(s) found, %d done, %d to do", spec.name, len(items), report.skipped, len(pending))
        settings = TaskSettings.from_spec(spec)
        if pending:
            payloads = [_item_payload(it) for it in pending]
            if scheduler or workers:
                from .distributed import dask_executor

                execute = dask_executor(scheduler=scheduler, workers=workers, threads=spec.concurrency)
            else:
                concurrency = 1 if spec.backend in SERIAL_BACKENDS else spec.concurrency
                execute = _local_executor(concurrency)
            for it in pending:
                journal.append("started", run=run_id, scene=it.id)
            last_refresh = time.monotonic()
            for outcome in execute(payloads, settings):
                _record(out, journal, run_id, outcome, report)
                if on_outcome is not None:
                    on_outcome(outcome)
                if time.monotonic() - last_refresh > 30:
                    _refresh_catalog(out)
                    last_refresh = time.monotonic()
        _refresh_catalog(out)
        if spec.push_to:
            from .push import push_pending

            pushed = push_pending(spec, journal, run_id)
            report.pushed, report.push_failed = pushed.pushed, pushed.failed
        report.seconds = time.perf_counter() - t0
        report.summary_paths = write_summary(out, report)
        log.info("%s", report.line())
        journal.append("run-end", run=run_id, found=report.found, skipped=report.skipped,
                       processed=len(report.processed), failed=len(report.failed), pushed=report.pushed,
                       seconds=round(report.seconds, 2))
    except BaseException as err:
        journal.append("run-end", run=run_id, error=_describe(err), error_type=type(err).__name__)
        raise
    finally:
        lock.release()
    if raise_on_failure:
        report.raise_for_failures()
    return report


def _record(out: Path, journal: Journal, run_id: str, o: SceneOutcome, report: JobReport) -> None:
    from ..outputs import write_item

    for a in o.attempts:
        journal.append("retry", run=run_id, scene=o.scene, host=o.host, pid=o.pid, **a)
    if o.ok and o.item is not None:
        try:
            item = pystac.Item.from_dict(o.item)
            write_item(out, item)
        except Exception as err:  # noqa: BLE001 - recorded as this scene's failure
            o.ok, o.error, o.error_type = False, f"cannot record the mask item: {_describe(err)}", type(err).__name__
        else:
            asset = item.assets["mask"].extra_fields
            journal.append("done", run=run_id, scene=o.scene, host=o.host, pid=o.pid, seconds=round(o.seconds, 2),
                           checksum=asset.get("file:checksum"), mask=(o.row or {}).get("mask"),
                           cloud=item.properties.get("eo:cloud_cover"),
                           shadow=item.properties.get("cloudmask:shadow_cover"))
            report.processed.append(o)
            log.info("done %s in %.1f s (cloud %.1f %%)", o.scene, o.seconds, item.properties.get("eo:cloud_cover", 0))
            return
    journal.append("failed", run=run_id, scene=o.scene, host=o.host, pid=o.pid, error=o.error,
                   error_type=o.error_type, attempts=len(o.attempts) + 1)
    report.failed.append(o)
    log.error("scene %s failed: %s", o.scene, o.error)


def _refresh_catalog(out: Path) -> None:
    from ..outputs import update_output_catalog

    update_output_catalog(out)


# ------------------------------------------------------------------------------------------ summary


def catalogue_rows(out: Path) -> list[dict[str, Any]]:
    """One row per mask in the output catalogue (all runs)."""
    from ..outputs import load_items

    rows = []
    for it in load_items(out):
        p = it.properties
        rows.append({
            "scene": p.get("cloudmask:source_id", it.id), "status": "done",
            "cloud": p.get("eo:cloud_cover"), "shadow": p.get("cloudmask:shadow_cover"),
            "clear": p.get("cloudmask:clear_cover"), "nodata": p.get("cloudmask:nodata_percentage"),
            "seconds": p.get("cloudmask:seconds"), "mask": str(out / it.assets["mask"].href.removeprefix("../")),
        })
    return rows


def write_summary(out: Path, report: JobReport) -> tuple[Path, Path]:
    """``OUT/summary.json`` (this run + every scene) and ``OUT/summary.csv`` (every scene), atomically."""
    this_run = {o.scene for o in report.processed}
    rows = catalogue_rows(out)
    for r in rows:
        r["run"] = "this" if r["scene"] in this_run else "earlier"
    for o in report.failed:
        rows.append({**_row(o), "run": "this"})
    doc = {
        "job": report.job,
        "finished": now_iso(),
        "run": {"found": report.found, "skipped": report.skipped, "processed": len(report.processed),
                "failed": len(report.failed), "pushed": report.pushed,
                "removed_temporaries": report.removed_temporaries, "seconds": round(report.seconds, 2)},
        "this_run": report.rows,
        "scenes": rows,
    }
    jpath, cpath = out / "summary.json", out / "summary.csv"
    tmp = out / f".summary.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, jpath)
    tmp = out / f".summary.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*SUMMARY_COLUMNS, "run"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, cpath)
    return jpath, cpath


# ------------------------------------------------------------------------------------------- status


@dataclass
class JobStatus:
    """Scenes of the job by state; ``pending`` and ``failed`` need a catalogue search."""

    job: str
    out_dir: Path
    done: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    done_elsewhere: int = 0  # masks in the output catalogue outside the current search
    running: dict[str, Any] | None = None
    searched: bool = True

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


def job_status(spec: JobSpec, *, search: bool = True, now: datetime | None = None) -> JobStatus:
    """Done / pending / failed scenes of ``spec`` (``search=False``: from the output directory only)."""
    out = Path(spec.output)
    st = JobStatus(job=spec.name, out_dir=out, searched=search)
    lock = JobLock(out, spec.name)
    if lock.path.exists():
        try:
            lock.acquire(wait=False)
            lock.release()
        except CloudmaskError:
            st.running = lock.holder() or {"pid": "?"}
    journal = Journal(out)
    last = journal.last_by_scene(("started", "done", "failed"))
    on_disk = {r["scene"] for r in catalogue_rows(out)} if out.exists() else set()
    ids: Iterable[str] = [it.id for it in search_items(spec, now)] if search else sorted(on_disk | set(last))
    for sid in ids:
        if check_done(out, sid).done:
            st.done.append(sid)
        elif last.get(sid, {}).get("event") == "failed":
            st.failed[sid] = str(last[sid].get("error"))
        else:
            st.pending.append(sid)
    st.done_elsewhere = len(on_disk - set(st.done)) if search else 0
    return st
