"""Catalogue jobs: batch and scheduled processing that is incremental, resumable and distributed.

``cloudmask job run SPEC`` (:mod:`.cli`) reads a job spec (:mod:`.spec`) and runs it (:mod:`.run`):
it takes the job's lock, searches, masks only the scenes the output catalogue does not hold yet
(:mod:`.state`), each scene a task (:mod:`.task`) run in this process or on a dask cluster
(:mod:`.executors`), and optionally pushes the items to a STAC API (:mod:`.push`).
``cloudmask job status SPEC`` is :mod:`.status`.
"""

from __future__ import annotations

from ..errors import JobLockedError, SceneFailuresError
from ..retry import RetryPolicy
from .run import JobReport, run_job
from .spec import JobSpec, load_spec, resolve_datetime, spec_from_dict
from .state import JobLock, Journal, check_done, clean_temporaries
from .status import JobStatus, job_status
from .task import SceneOutcome, process_scene

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
