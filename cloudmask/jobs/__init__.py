"""Catalogue jobs: batch and scheduled processing that is incremental, resumable and distributed.

``cloudmask job run SPEC`` (see :mod:`cloudmask.jobs.cli`) reads a job spec (:mod:`.spec`), takes the
job's lock, masks only the scenes the output catalogue does not hold yet (:mod:`.state`,
:mod:`.runner`), locally or on a dask cluster (:mod:`.distributed`), and optionally pushes the items to
a STAC API (:mod:`.push`).
"""

from __future__ import annotations

from .runner import JobReport, JobStatus, SceneOutcome, job_status, process_scene, run_job
from .spec import JobSpec, RetryPolicy, load_spec, resolve_datetime, spec_from_dict
from .state import JobLock, JobLockedError, Journal, SceneFailuresError, check_done, clean_temporaries

__all__ = [
    "JobLock",
    "JobLockedError",
    "JobReport",
    "JobSpec",
    "JobStatus",
    "Journal",
    "RetryPolicy",
    "SceneFailuresError",
    "SceneOutcome",
    "check_done",
    "clean_temporaries",
    "job_status",
    "load_spec",
    "process_scene",
    "resolve_datetime",
    "run_job",
    "spec_from_dict",
]
