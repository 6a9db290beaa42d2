"""The ``cloudmask`` command line: the top-level group with its own commands (:mod:`.commands`) and the
``job`` and ``metis`` groups, added here explicitly (entry point ``cloudmask.cli:main``)."""

from __future__ import annotations

from ..jobs.cli import job
from ..metis.cli import metis
from .commands import main

main.add_command(job)
main.add_command(metis)

__all__ = ["main"]
