"""One scene as a unit of work: :func:`process_scene`, a plain function of a STAC item dict and picklable
:class:`TaskSettings`, run in this process or as a dask task (see :mod:`.executors`).

It writes the mask into the output directory (atomically, see :class:`~cloudmask.writer.CogSink`) and
returns a :class:`SceneOutcome` with the mask's STAC item; only the driver (:mod:`.run`) writes items,
the journal, the catalogue and the summary. Each process loads a model once
(:func:`cloudmask.runtime.pool.process_pool`) and a scene calls it only while it holds the runners' lease.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac

from .. import interrupt, retry
from ..errors import CloudmaskError
from ..options import MaskOptions, MaskPlan
from ..output_catalog import mask_item
from ..pipeline import mask_scene_spec
from ..profiles import scene_spec
from ..quicklook import quicklook_or_note
from ..retry import TRANSIENT
from ..runtime.pool import process_pool, runner_loads
from .spec import JobSpec
from .state import check_lease

log = logging.getLogger(__name__)

#: Backends on which a second scene in flight does not pay (one device): the local executor keeps two.
SERIAL_BACKENDS = frozenset({"metis"})

# ----------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class TaskSettings:
    """What a worker needs to mask one scene (picklable): the output folder and the job's
    :class:`~cloudmask.options.MaskOptions` (:meth:`MaskOptions.from_job`: the spec's keys)."""

    out_dir: str
    options: MaskOptions = field(default_factory=lambda: MaskOptions(quicklook=False))
    #: the run's token (:func:`~.state.check_lease`): nothing is published once that run lost the job's lock
    lease: str | None = None

    @classmethod
    def from_spec(cls, spec: JobSpec) -> TaskSettings:
        return cls(out_dir=str(spec.output), options=MaskOptions.from_job(spec))


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


# ------------------------------------------------------------------------------------ one scene


def process_scene(item: Mapping[str, Any], settings: TaskSettings) -> SceneOutcome:
    """Mask one scene, retrying transient failures (:data:`TRANSIENT`); never raises for a scene's own
    failure: the error and every failed attempt are in the returned :class:`SceneOutcome`."""
    scene = str(item.get("id"))
    t0 = time.perf_counter()
    outcome = SceneOutcome(scene=scene, ok=False, host=socket.gethostname(), pid=os.getpid())

    def note(attempt: int, err: BaseException, delay: float) -> None:
        outcome.attempts.append({"attempt": attempt, "error": describe_error(err), "retry_in_s": delay})

    lease = (interrupt.lease(functools.partial(check_lease, settings.out_dir, settings.lease))
             if settings.lease else contextlib.nullcontext())
    try:
        with lease:
            outcome.item, outcome.row = retry.call(
                lambda: _mask_once(item, settings), settings.options.retries, lambda e: isinstance(e, TRANSIENT),
                f"scene {scene}", on_retry=note,
            )
        outcome.ok = True
    except Exception as err:  # noqa: BLE001 - a failing scene is isolated, not fatal
        outcome.error, outcome.error_type = describe_error(err), type(err).__name__
        if not isinstance(err, CloudmaskError):
            log.debug("scene %s failed", scene, exc_info=True)
    outcome.seconds = time.perf_counter() - t0
    outcome.loads = runner_loads()
    return outcome


def _mask_once(item: Mapping[str, Any], settings: TaskSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """One attempt at one scene: the mask item (dict) and the summary row."""
    o = settings.options
    spec = scene_spec(pystac.Item.from_dict(dict(item)), o.profile)
    plan = MaskPlan.for_scene(o, spec)
    lease = process_pool().lease(plan.card, o.backend, instances=o.instances, threads=o.threads,
                                 latency_s=o.latency_s, ov=o.ov())
    # the runners are this scene's only while it streams (not while it opens or finishes its COG); they load
    # (the first time) while the scene's first rows are read
    res = mask_scene_spec(spec, Path(settings.out_dir), plan.card, runners=lambda: lease.runners, stream=plan.stream,
                          resolution=o.resolution, classes=o.classes,
                          postprocess=dict(o.postprocess) if o.postprocess else None, reader=o.reader(),
                          device=lease)
    res.extra.setdefault("backend", o.backend)  # what ran (a fallback to ONNX Runtime says so)
    if o.quicklook:
        quicklook_or_note(spec, res)  # the policy of every batch: unwritable fails, undrawable is noted
    doc = mask_item(spec, res).to_dict(include_self_link=False, transform_hrefs=False)
    return doc, {**res.row(), "model": plan.card.name}


def expected_outputs(settings: TaskSettings) -> tuple[str, ...]:
    """The assets besides the mask that a done scene must have under ``settings``."""
    return settings.options.outputs()


def expected_recipe(item: pystac.Item | Mapping[str, Any], settings: TaskSettings) -> str | None:
    """The fingerprint (:func:`cloudmask.pipeline.scene_fingerprint`) a mask of ``item`` made now with
    ``settings`` gets; None when the item or model cannot be resolved (masking it will say why)."""
    try:
        it = item if isinstance(item, pystac.Item) else pystac.Item.from_dict(dict(item))
        return MaskPlan.for_scene(settings.options, scene_spec(it, settings.options.profile)).recipe
    except CloudmaskError as err:
        log.debug("scene %s: no recipe (%s)", getattr(item, "id", None), err)
        return None


def describe_error(err: BaseException) -> str:
    """An error as one line: cloudmask errors as they are, others prefixed with their type."""
    text = str(err) or type(err).__name__
    return text if isinstance(err, CloudmaskError) else f"{type(err).__name__}: {text}"
