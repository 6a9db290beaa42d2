"""What a job has done and what is left: done, pending and failed scenes, and who is running it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .run import scene_done, search_items
from .spec import JobSpec
from .state import JobLock, Journal, catalogue_rows, check_done
from .task import TaskSettings

__all__ = ["JobStatus", "job_status"]


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
    st.running = JobLock(out, spec.name).running()
    journal = Journal(out)
    last = journal.last_by_scene(("started", "done", "failed"))
    on_disk = {r["scene"] for r in catalogue_rows(out)} if out.exists() else set()
    settings = TaskSettings.from_spec(spec)
    found = search_items(spec, now) if search else None
    ids: Iterable[str] = [it.id for it in found] if found is not None else sorted(on_disk | set(last))
    by_id = {it.id: it for it in found} if found is not None else {}
    for sid in ids:
        # searched: the job's own done rule (settings and outputs); offline: the mask and its checksum
        if (scene_done(out, by_id[sid], settings) if sid in by_id else check_done(out, sid)).done:
            st.done.append(sid)
        elif last.get(sid, {}).get("event") == "failed":
            st.failed[sid] = str(last[sid].get("error"))
        else:
            st.pending.append(sid)
    st.done_elsewhere = len(on_disk - set(st.done)) if search else 0
    return st
