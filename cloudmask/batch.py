"""Many scenes into one output directory, one after the other, each failure kept to its scene.

What ``cloudmask run`` and ``cloudmask demo`` do: mask every scene (a scene that fails is reported and
the others go on), always rebuild the output catalogue from the items on disk, and write a summary
(``summary.json``) of what was done, skipped and failed. A full disk stops the batch at once (every
later scene would fail the same way) but keeps what was already written.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import atomic, retry
from .errors import CloudmaskError, ConfigError, ItemLayoutError, ModelError, SceneFailuresError, WriteError
from .jobs.state import check_done
from .layout import rows_relative_to
from .output_catalog import update_output_catalog
from .profiles import scene_spec
from .retry import TRANSIENT
from .scene import SceneSpec
from .writer import restore_category_names

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """Rows of a batch: one per scene, ``status`` done | skipped | failed."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    catalog: Path | None = None
    summary: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    def raise_for_failures(self) -> None:
        """Raise :class:`~cloudmask.errors.SceneFailuresError` (exit 8) when any scene failed."""
        if self.failed:
            names = ", ".join(r["scene"] for r in self.failed[:3]) + (" ..." if len(self.failed) > 3 else "")
            raise SceneFailuresError(
                f"{len(self.failed)} of {len(self.rows)} scenes failed ({names}); the others are in "
                f"{self.catalog or 'the output directory'}; see {self.summary or 'the summary'} for each error"
            )


def existing_output(out: Path, spec: SceneSpec, model: str, classes: str | None = None, *,
                    recipe: str | None = None, outputs: Sequence[str] = ()) -> dict[str, Any] | None:
    """The summary row of a finished, valid mask of ``spec`` by ``model`` in ``out``, or None.

    Finished and valid (:func:`cloudmask.jobs.state.check_done`, the rule jobs use too): the output
    item exists, names this source scene and model (and, given ``classes``, the same class table, e.g.
    ``0=clear,1=cloud,2=shadow,255=nodata``), its mask file has the size and checksum the item records,
    given ``recipe`` (:func:`cloudmask.pipeline.scene_fingerprint`) it was made with the same settings,
    and every asset in ``outputs`` (``quicklook``, ``probabilities``) exists.
    """
    try:
        check = check_done(out, spec.id, recipe=recipe, outputs=outputs)
    except ItemLayoutError:  # an id that gives no file name: the scene fails alone when it is masked
        return None
    if not check.done or check.item_path is None:
        return None
    doc = json.loads(check.item_path.read_text())
    props = doc.get("properties", {})
    if props.get("cloudmask:model") not in (None, model):
        return None
    if classes is not None and props.get("cloudmask:classes") not in (None, classes):
        return None
    mask = (check.item_path.parent / doc["assets"]["mask"]["href"]).resolve()
    restore_category_names(mask)  # a kept mask gets its category sidecar back if it was deleted
    return {"scene": spec.id, "status": "skipped", "model": model, "mask": str(mask)}


def mask_many(
    specs: Iterable[SceneSpec],
    out: Path,
    mask_one: Callable[[SceneSpec], dict[str, Any]],
    *,
    keep: Callable[[SceneSpec], dict[str, Any] | None] | None = None,
    write_catalog: Callable[[Path], Path] | None = None,
    failed: Sequence[dict[str, Any]] = (),
    on_row: Callable[[dict[str, Any]], None] | None = None,
    attempts: Mapping[str, int] | None = None,
) -> BatchReport:
    """Mask ``specs`` with ``mask_one`` (scene -> summary row); isolate failures; catalogue + summary.

    ``keep(spec)`` returns the row of a finished output to keep instead of masking the scene again
    (``--skip-existing``: :func:`existing_output`), or None. ``write_catalog`` rebuilds
    the output catalogue (default: :func:`cloudmask.output_catalog.update_output_catalog`). ``failed`` are rows
    of scenes that failed before masking (e.g. an item without a needed band). Never raises for a
    failed scene; raises :class:`~cloudmask.errors.WriteError` when the disk is full.
    """
    out = prepare_out_dir(out)
    report = BatchReport()

    def add(row: dict[str, Any]) -> None:
        report.rows.append(row)
        if on_row is not None:
            on_row(row)

    for r in failed:
        add(dict(r))
    fatal: WriteError | None = None
    for spec in specs:
        if keep is not None:
            kept = keep(spec)
            if kept is not None:
                log.info("scene %s: a valid mask exists, kept (--skip-existing)", spec.id)
                add(kept)
                continue
        t0 = time.perf_counter()
        try:
            row = mask_one(spec)
        except (ConfigError, ModelError):
            raise  # the user's settings, not the scene: every scene would fail the same way
        except Exception as err:  # noqa: BLE001 - one scene's failure must not lose the others
            if isinstance(err, OSError):
                err = atomic.write_error(err, out)
            if isinstance(err, CloudmaskError):
                log.debug("scene %s failed: %s", spec.id, err)  # on_row reports it
            else:
                log.exception("scene %s failed unexpectedly: %s", spec.id, err)
            add({"scene": spec.id, "status": "failed", "error": str(err), "error_type": type(err).__name__,
                 "seconds": round(time.perf_counter() - t0, 2), "attempts": (attempts or {}).get(spec.id, 1)})
            if atomic.is_no_space(err):
                fatal = err if isinstance(err, WriteError) else atomic.write_error(err, out)
                break
            continue
        add({**row, "status": "done", "attempts": (attempts or {}).get(spec.id, 1)})
    try:
        report.catalog = _catalog(out, write_catalog, report)
        report.summary = write_summary(out, report.rows)[0]
    except (CloudmaskError, OSError) as err:
        if fatal is None:
            raise err if isinstance(err, CloudmaskError) else atomic.write_error(err, out) from err
        log.error("could not write the catalogue or summary: %s", err)
    if fatal is not None:
        raise fatal
    return report


def is_transient(err: BaseException) -> bool:
    """Whether a scene's failure is worth another attempt (:data:`cloudmask.retry.TRANSIENT`, the rule jobs
    use); the user's settings (:class:`ConfigError`, :class:`ModelError`) never are."""
    return isinstance(err, TRANSIENT) and not isinstance(err, ConfigError | ModelError)


def _catalog(out: Path, write_catalog: Callable[[Path], Path] | None, report: BatchReport) -> Path | None:
    """The output catalogue, always (an empty one when every scene failed: a run's outputs are complete)."""
    if write_catalog is None:
        write_catalog = update_output_catalog
    return write_catalog(out)


def prepare_out_dir(out: Path | str) -> Path:
    """Create the output directory ``out`` or say why it cannot be one (:class:`ConfigError`, exit 2)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; give a directory (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot create the output directory ({err.strerror}); "
                          "choose a writable place") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} is not writable; choose a writable directory")
    return out


def refuse_input_in_out(stac: str | Path, out: Path | str, option: str = "--out") -> None:
    """Refuse (:class:`ConfigError`, exit 2) an output directory ``out`` that holds the input catalogue
    ``stac`` (a local ``catalog.json``/``collection.json``/ItemCollection file, or a folder holding one):
    the output catalogue would overwrite it. STAC APIs and named endpoints pass."""
    from .stac import is_remote

    if is_remote(stac):
        return
    cat = Path(stac).expanduser()
    if cat.is_dir():
        found = next((cat / n for n in ("catalog.json", "collection.json") if (cat / n).is_file()), None)
        if found is None:
            return  # searching it says what is wrong
        cat = found
    out_dir = Path(out).expanduser()
    try:
        same = cat.exists() and out_dir.exists() and cat.resolve().parent == out_dir.resolve()
    except OSError:
        return
    if same:
        raise ConfigError(
            f"{option} {out} holds the input catalogue {cat}: the output catalogue (catalog.json, collection.json, "
            "items/) would overwrite it; choose another output directory, e.g. a subfolder"
        )


def specs_of(items: Iterable[Any], profile: str | None = None) -> tuple[list[SceneSpec], list[dict[str, Any]]]:
    """Scene specs of ``items``, and a failed row for each item that cannot be read as a scene."""
    specs: list[SceneSpec] = []
    failed: list[dict[str, Any]] = []
    for it in items:
        try:
            specs.append(scene_spec(it, profile))
        except ConfigError:
            raise
        except CloudmaskError as err:
            log.info("scene %s failed: %s", getattr(it, "id", it), err)  # the caller reports the row
            failed.append({"scene": getattr(it, "id", str(it)), "status": "failed", "error": str(err),
                           "error_type": type(err).__name__})
    return specs, failed


#: The columns of ``summary.csv`` (every batch: ``run``, ``demo``, ``job run``).
SUMMARY_COLUMNS = ("scene", "status", "cloud", "shadow", "thin_cloud", "snow", "clear", "nodata", "seconds", "attempts",
                   "mask", "error")


def write_summary(out: Path, rows: Sequence[dict[str, Any]], *, job: str | None = None,
                  run: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``summary.json`` and ``summary.csv`` in ``out``, the one schema of ``run``, ``demo`` and ``job run``
    (written atomically; mask paths relative to ``out``).

    ``summary.json``: ``job`` (its name, or null), ``finished`` (ISO time), ``found``/``done``/``skipped``/
    ``failed`` (this run's scenes by status), ``run`` (this run's counters: found, skipped, processed, failed,
    pushed, removed_temporaries, seconds), ``rows`` (this run's scenes, one row each) and ``scenes`` (every
    scene of the output folder: the masks in its catalogue, then this run's failures). ``summary.csv``:
    the ``scenes`` rows (:data:`SUMMARY_COLUMNS` and ``run``: this | earlier).
    """
    import csv

    from .jobs.state import catalogue_rows, now_iso

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    this = {r["scene"] for r in rows if r["status"] == "done"}
    on_disk = catalogue_rows(Path(out)) if (Path(out) / "items").is_dir() else []
    scenes = [{**r, "run": "this" if r["scene"] in this else "earlier"} for r in on_disk]
    scenes += [{**r, "run": "this"} for r in rows if r["status"] == "failed"]
    counters = {"found": len(rows), "skipped": counts.get("skipped", 0), "processed": counts.get("done", 0),
                "failed": counts.get("failed", 0), "pushed": 0, "removed_temporaries": 0, "seconds": 0.0,
                **(run or {})}
    doc = {"job": job, "finished": now_iso(), "found": len(rows),
           **{k: counts.get(k, 0) for k in ("done", "skipped", "failed")}, "run": counters,
           "rows": rows_relative_to(out, list(rows)), "scenes": rows_relative_to(out, scenes)}
    jpath, cpath = Path(out) / "summary.json", Path(out) / "summary.csv"
    atomic.write_text(jpath, json.dumps(doc, indent=1, default=str))
    with atomic.atomic_path(cpath) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*SUMMARY_COLUMNS, "run"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows_relative_to(out, scenes))
    return jpath, cpath



class BatchRunner:
    """The scene loop of ``run`` and ``demo``: :class:`~cloudmask.options.MaskOptions` applied to many scenes.

    Each scene's :class:`~cloudmask.options.MaskPlan` is worked out once; finished scenes are kept
    (``skip_existing``: :func:`existing_output`, the done rule jobs use); scenes overlap on the device
    (:class:`~cloudmask.overlap.ScenePipeline`: one streams while the next opens and the one before
    finishes its COG, quicklook and item) and call the runners only while they hold their lease
    (:class:`~cloudmask.runtime.pool.RunnerPool`, this batch's, closed when it ends); a transient failure
    is retried (``options.retries``); every scene's outcome becomes a row of :func:`mask_many`'s report.

    Hooks (all optional): ``on_row(row)`` per row, ``scene_progress(scene_id)`` a context manager giving
    the scene's ``progress(done, total)`` callback, ``on_result(spec, result)`` per masked scene,
    ``on_load(card, runners)`` once per set of runners loaded.
    """

    def __init__(self, options: Any, out: Path, *, skip_existing: bool = False,
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 scene_progress: Callable[[str], Any] | None = None,
                 on_result: Callable[[SceneSpec, Any], None] | None = None,
                 on_load: Callable[[Any, Sequence[Any]], None] | None = None) -> None:
        import threading

        from .models import load_model
        from .overlap import DeviceClock

        self.options, self.out, self.skip_existing = options, Path(out), skip_existing
        self.on_row, self.scene_progress, self.on_result, self.on_load = on_row, scene_progress, on_result, on_load
        self.clock = DeviceClock()
        self.stats: dict[str, dict[str, Any]] = {}  # scene id -> its stats and device turn
        self.attempts: dict[str, int] = {}
        self._fixed = None if options.model == "auto" else load_model(options.model)  # "auto" is per scene
        self._plans: dict[str, Any] = {}
        self._kept: dict[str, dict[str, Any] | None] = {}  # scene id -> the finished output kept (checksummed once)
        self._timed: dict[Any, Any] = {}  # lease key -> its runners timed by the device clock
        self._lock = threading.Lock()

    def plan(self, spec: SceneSpec) -> Any:
        """The scene's :class:`~cloudmask.options.MaskPlan` (made once)."""
        from .options import MaskPlan

        if spec.id not in self._plans:
            self._plans[spec.id] = MaskPlan.for_scene(self.options, spec, self._fixed)
        return self._plans[spec.id]

    def kept(self, spec: SceneSpec) -> dict[str, Any] | None:
        """The row of the scene's finished output when it is done under these options, else None."""
        if spec.id not in self._kept:
            plan = self.plan(spec)
            self._kept[spec.id] = existing_output(self.out, spec, plan.card.name, plan.class_table,
                                                  recipe=plan.recipe, outputs=plan.outputs)
        return self._kept[spec.id]

    def skip(self, spec: SceneSpec) -> bool:
        return self.skip_existing and self.kept(spec) is not None

    def mask_one(self, spec: SceneSpec, turn: Any = None) -> dict[str, Any]:
        """Mask one scene (outputs, quicklook, item): its summary row. ``turn``: its device turn, held while
        it streams, with the runners' lease."""
        import contextlib

        from .api import mask_scene
        from .runtime.pool import held

        o, plan = self.options, self.plan(spec)
        lease = self.pool.lease(plan.card, o.backend, instances=o.instances, threads=o.threads, latency_s=o.latency_s,
                                ov=o.ov())

        def runners() -> Sequence[Any]:  # called by the scene once its first rows are being read
            loaded = lease.runners  # the model loads here the first time
            with self._lock:
                first = lease.key not in self._timed
                if first:
                    self._timed[lease.key] = self.clock.wrap(loaded)
            if first and self.on_load is not None:
                self.on_load(plan.card, loaded)
            return self._timed[lease.key]

        progress = self.scene_progress(spec.id[:40]) if self.scene_progress else contextlib.nullcontext()
        with progress as cb:
            res = mask_scene(spec, self.out, plan.card, runners=runners, stream=plan.stream,
                             resolution=o.resolution, progress=cb, quicklook=o.quicklook, catalog=False,
                             classes=o.classes, postprocess=dict(o.postprocess) if o.postprocess else None,
                             device=held(turn, lease), reader=o.reader())
        self.stats[spec.id] = {"scene": spec.id, "model": plan.card.name,
                               "turn": None if turn is None else turn.number,
                               "backend": res.extra.get("backend", o.backend), "precision": res.extra.get("precision"),
                               **res.stats.as_dict()}
        if self.on_result is not None:
            self.on_result(spec, res)
        return {**res.row(), "model": plan.card.name, "res_m": plan.resolution}

    def mask_retried(self, spec: SceneSpec, turn: Any = None) -> dict[str, Any]:
        """:meth:`mask_one`, tried again on a transient failure under ``options.retries`` (:func:`is_transient`);
        the attempts made are in ``attempts[spec.id]``."""
        self.attempts[spec.id] = 0
        return retry.call(functools.partial(self._attempt, spec, turn), self.options.retries, is_transient,
                          f"scene {spec.id}")

    def _attempt(self, spec: SceneSpec, turn: Any) -> dict[str, Any]:
        self.attempts[spec.id] += 1
        return self.mask_one(spec, turn)

    def run(self, specs: Sequence[SceneSpec], failed: Sequence[dict[str, Any]] = ()) -> BatchReport:
        """Mask ``specs`` into the output folder (:func:`mask_many`: failures isolated, catalogue and summary
        always written); ``failed``: rows of scenes that failed before masking."""
        from .overlap import ScenePipeline
        from .runtime.pool import RunnerPool

        if self.skip_existing:  # resuming: what killed runs left behind goes (writers whose pid is not alive)
            from .jobs.state import clean_temporaries

            clean_temporaries(self.out)
        # this batch's runners are loaded once and closed when it ends (after the scenes in flight)
        with RunnerPool() as self.pool, ScenePipeline(specs, self.mask_retried, skip=self.skip,
                                                      clock=self.clock) as scenes:
            return mask_many(specs, self.out, scenes, keep=self.kept if self.skip_existing else None,
                             failed=failed, on_row=self.on_row, attempts=self.attempts)
