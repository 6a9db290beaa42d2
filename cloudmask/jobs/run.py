"""Run a job: search, skip what is done, mask the rest (retrying, isolating failures), catalogue, push.

:func:`run_job` is the driver: it holds the job's lock, searches, hands pending scenes to an
executor (:mod:`.executors`), and alone writes items, the journal, the catalogue and the summary.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pystac

from .. import __version__, retry
from ..batch import refuse_input_in_out
from ..batch import write_summary as batch_summary
from ..errors import CatalogUnreachableError, ItemLayoutError, JobError, SceneFailuresError, WriteError
from ..layout import OutputPaths, output_stem
from ..output_catalog import item_percentages, update_output_catalog, write_item
from ..stac import search
from ..writer import restore_category_names
from .executors import dask_executor, local_executor
from .push import push_pending
from .spec import JobSpec
from .state import (
    DoneCheck,
    JobLock,
    Journal,
    catalogue_rows,
    check_done,
    clean_temporaries,
    is_collision,
)
from .task import (
    SERIAL_BACKENDS,
    SceneOutcome,
    TaskSettings,
    describe_error,
    expected_outputs,
    expected_recipe,
)

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------ search


def search_items(spec: JobSpec, now: datetime | None = None) -> list[pystac.Item]:
    """The job's scenes, unique by id; an unreachable catalogue is searched again per ``spec.retries``
    (on top of the per-request HTTP retries)."""
    query = spec.query(now)
    items = retry.call(
        lambda: search(spec.stac, query, http=spec.http_policy()), spec.retries,
        lambda e: isinstance(e, CatalogUnreachableError | OSError), f"catalogue search of {spec.stac}",
    )
    seen: set[str] = set()
    unique = []
    for it in items:
        if it.id not in seen:
            seen.add(it.id)
            unique.append(it)
    return unique


def scene_done(out: Path, item: pystac.Item, settings: TaskSettings) -> DoneCheck:
    """Whether ``item`` is done in ``out`` for a job with ``settings``: :func:`~.state.check_done` with
    the recipe a mask made now would have and every output the spec asks for (quicklook, probabilities)."""
    recipe = expected_recipe(item, settings)
    if recipe is None:  # the scene cannot be masked as the spec says: masking it will say why
        check = check_done(out, item.id)
        return replace(check, done=False, reason="its settings cannot be resolved") if check.done else check
    return check_done(out, item.id, recipe=recipe, outputs=expected_outputs(settings))


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
    kept: set[str] = field(default_factory=set)  # ids of the scenes found done (skipped)
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
        full = next((o for o in self.failed if "no space left on device" in (o.error or "").lower()), None)
        if full is not None:  # a full disk is not the scenes' fault: say so (exit 7)
            raise WriteError(f"{full.error} ({len(self.failed)} of {self.found} scene(s) not done; the next run "
                             "does them)")
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
        return [scene_row(o) for o in self.processed + self.failed]

    def line(self) -> str:
        return (
            f"job {self.job}: {self.found} scene(s) found, {self.skipped} already done, "
            f"{len(self.processed)} masked, {len(self.failed)} failed in {self.seconds:.1f} s"
        )


def scene_row(o: SceneOutcome) -> dict[str, Any]:
    """The summary row of one scene outcome (what summary.json, the table and the log line show)."""
    base: dict[str, Any] = {"scene": o.scene, "status": "done" if o.ok else "failed",
                            "attempts": len(o.attempts) + 1}
    if o.ok and o.row:
        base.update({k: o.row.get(k) for k in ("model", "cloud", "shadow", "thin_cloud", "snow", "clear", "nodata",
                                                "seconds", "mask") if k in o.row})
    else:
        base.update({"seconds": round(o.seconds, 2), "error": o.error, "error_type": o.error_type})
    return base


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
    refuse_input_in_out(spec.stac, out, "output")
    out.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    lock = JobLock(out, spec.name, run=run_id).acquire(wait=wait, timeout=wait_timeout)
    journal = Journal(out)
    report = JobReport(job=spec.name, out_dir=out, push_to=spec.push_to, journal=journal.path)
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
        settings = replace(TaskSettings.from_spec(spec), lease=run_id)  # tasks publish only while this run holds the lock
        for it in items:
            try:
                check = scene_done(out, it, settings)
                stem = output_stem(it.id)
            except ItemLayoutError as err:  # an id that gives no file name fails alone
                report.failed.append(SceneOutcome(scene=it.id, ok=False, error=str(err), error_type=type(err).__name__))
                journal.append("failed", run=run_id, scene=it.id, error=str(err), error_type=type(err).__name__)
                continue
            if check.done:
                report.skipped += 1
                report.kept.add(it.id)
                restore_category_names(OutputPaths.for_scene(out, it.id).mask)  # a deleted sidecar comes back
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
        if pending:
            payloads = [_item_payload(it) for it in pending]
            if scheduler or workers:
                execute = dask_executor(scheduler=scheduler, workers=workers, threads=spec.concurrency,
                                        on_abort=lock.revoke)
            else:
                # scenes stream one at a time on this process's runners (task.py holds their lease only while
                # streaming); a second scene in flight opens, reads ahead and finishes its outputs meanwhile
                execute = local_executor(2 if spec.backend in SERIAL_BACKENDS else spec.concurrency)
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
            pushed = push_pending(spec, journal, run_id)
            report.pushed, report.push_failed = pushed.pushed, pushed.failed
        report.seconds = time.perf_counter() - t0
        report.summary_paths = write_summary(out, report)
        log.info("%s", report.line())
        journal.append("run-end", run=run_id, found=report.found, skipped=report.skipped,
                       processed=len(report.processed), failed=len(report.failed), pushed=report.pushed,
                       seconds=round(report.seconds, 2))
    except BaseException as err:
        lock.revoke()  # tasks still running somewhere (dask workers) publish nothing more
        journal.append("run-end", run=run_id, error=describe_error(err), error_type=type(err).__name__)
        raise
    finally:
        lock.release()
    if raise_on_failure:
        report.raise_for_failures()
    return report


def _record(out: Path, journal: Journal, run_id: str, o: SceneOutcome, report: JobReport) -> None:
    for a in o.attempts:
        journal.append("retry", run=run_id, scene=o.scene, host=o.host, pid=o.pid, **a)
    if o.ok and o.item is not None:
        try:
            item = pystac.Item.from_dict(o.item)
            write_item(out, item)
        except Exception as err:  # noqa: BLE001 - recorded as this scene's failure
            o.ok, o.error, o.error_type = False, f"cannot record the mask item: {describe_error(err)}", type(err).__name__
        else:
            asset = item.assets["mask"].extra_fields
            journal.append("done", run=run_id, scene=o.scene, host=o.host, pid=o.pid, seconds=round(o.seconds, 2),
                           checksum=asset.get("file:checksum"), mask=(o.row or {}).get("mask"),
                           cloud=item.properties.get("eo:cloud_cover"),
                           shadow=item_percentages(item).get("shadow"))
            report.processed.append(o)
            # the per-scene line is the caller's (on_outcome; the CLI's console.scene_result), not a second one here
            log.debug("done %s in %.1f s (cloud %.1f %%)", o.scene, o.seconds, item.properties.get("eo:cloud_cover", 0))
            return
    journal.append("failed", run=run_id, scene=o.scene, host=o.host, pid=o.pid, error=o.error,
                   error_type=o.error_type, attempts=len(o.attempts) + 1)
    report.failed.append(o)
    log.debug("scene %s failed: %s", o.scene, o.error)  # reported by on_outcome and raise_for_failures


def _refresh_catalog(out: Path) -> None:
    update_output_catalog(out)


# ------------------------------------------------------------------------------------------ summary


def write_summary(out: Path, report: JobReport) -> tuple[Path, Path]:
    """``OUT/summary.json`` and ``OUT/summary.csv``: :func:`cloudmask.batch.write_summary`, the schema ``run``
    writes too (this run's rows: the scenes it masked, kept or failed)."""
    kept = [{**r, "status": "skipped"} for r in catalogue_rows(out) if r["scene"] in report.kept]
    rows = [*(scene_row(o) for o in report.processed), *kept, *(scene_row(o) for o in report.failed)]
    return batch_summary(out, rows, job=report.job, run={
        "found": report.found, "skipped": report.skipped, "processed": len(report.processed),
        "failed": len(report.failed), "pushed": report.pushed, "removed_temporaries": report.removed_temporaries,
        "seconds": round(report.seconds, 2)})
