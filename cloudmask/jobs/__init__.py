"""Catalogue jobs: batch and scheduled processing that is incremental, resumable and distributed.

``cloudmask job run SPEC`` (:mod:`.cli`) reads a job spec (:mod:`.spec`) and runs it (:mod:`.run`):
it takes the job's lock, searches, masks only the scenes the output catalogue does not hold yet
(:mod:`.state`), each scene a task (:mod:`.task`) run in this process or on a dask cluster
(:mod:`.executors`), and optionally pushes the items to a STAC API (:mod:`.push`).
``cloudmask job status SPEC`` is :mod:`.status`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public names and the module that holds each; imported on first use (PEP 562), so that the CLI's
#: ``job`` command group (:mod:`.cli`) loads without the models, runtimes and pydantic.
_EXPORTS = {
    "JobLockedError": "cloudmask.errors",
    "SceneFailuresError": "cloudmask.errors",
    "RetryPolicy": "cloudmask.retry",
    "JobReport": ".run",
    "run_job": ".run",
    "JobSpec": ".spec",
    "load_spec": ".spec",
    "resolve_datetime": ".spec",
    "spec_from_dict": ".spec",
    "JobLock": ".state",
    "Journal": ".state",
    "check_done": ".state",
    "clean_temporaries": ".state",
    "JobStatus": ".status",
    "job_status": ".status",
    "SceneOutcome": ".task",
    "process_scene": ".task",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
