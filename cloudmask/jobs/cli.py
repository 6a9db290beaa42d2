"""``cloudmask job run SPEC`` and ``cloudmask job status SPEC``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..console import CloudmaskGroup, note, scene_result, table

_COLUMNS = ("scene", "status", "cloud", "shadow", "thin_cloud", "snow", "clear", "nodata", "seconds", "attempts", "error")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    return table(rows, columns, drop_empty=True)


def _load(spec_path: Path, output: Path | None) -> Any:
    from .spec import load_spec

    spec = load_spec(spec_path)
    return spec.with_output(output.resolve()) if output is not None else spec


@click.group(cls=CloudmaskGroup)
def job() -> None:
    """Catalogue jobs: incremental, resumable batch runs driven by a job spec (TOML or YAML).

    Exit codes: 0 all done, 8 some scenes failed (the rest are done), 75 another run holds the
    job's lock, 2 invalid spec, 4 catalogue unreachable.
    """


@job.command("run")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait", is_flag=True, help="Wait for another run of this job to finish instead of exiting (75).")
@click.option("--wait-timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.option("--scheduler", default=None, help="Run scenes on this dask scheduler, e.g. tcp://host:8786.")
@click.option("--workers", type=int, default=None, help="Start a local dask cluster of N worker processes.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Override the spec's output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
def run_cmd(spec_path: Path, wait: bool, wait_timeout: float | None, scheduler: str | None,
            workers: int | None, output: Path | None, as_json: bool) -> None:
    """Mask every scene of SPEC not done yet; write items, catalogue, journal and summary.

    One line per scene on stderr (the same as `cloudmask run` prints); unattended, use
    ``cloudmask --log-format json`` (one JSON object per line, docs/unattended.md).
    """
    from .run import run_job, scene_row
    from .task import SceneOutcome

    spec = _load(spec_path, output)
    if scheduler is not None and workers is not None:
        raise click.UsageError("give --scheduler or --workers, not both")

    def echo(o: SceneOutcome) -> None:
        scene_result(scene_row(o))  # the same line as `cloudmask run` prints

    report = run_job(spec, wait=wait, wait_timeout=wait_timeout, scheduler=scheduler, workers=workers,
                     on_outcome=None if as_json else echo, raise_on_failure=False)
    if as_json:
        click.echo(json.dumps({"job": report.job, "found": report.found, "skipped": report.skipped,
                               "processed": len(report.processed), "failed": len(report.failed),
                               "pushed": report.pushed, "seconds": round(report.seconds, 2),
                               "scenes": report.rows}, default=str))
    else:
        if report.rows:
            click.echo(_table(report.rows, _COLUMNS))
        note(report.line() + (f"; pushed {report.pushed}" if report.push_to else ""), event="run-end", job=report.job,
             found=report.found, skipped=report.skipped, processed=len(report.processed),
             failed=len(report.failed), seconds=round(report.seconds, 2))
        note(f"summary: {report.out_dir / 'summary.csv'}")
    report.raise_for_failures()


@job.command("status")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--offline", is_flag=True, help="Do not search the catalogue: only what the output directory knows.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Override the spec's output directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("-l", "--list", "show_list", is_flag=True, help="List pending and failed scenes.")
def status_cmd(spec_path: Path, offline: bool, output: Path | None, as_json: bool, show_list: bool) -> None:
    """Done, pending and failed scenes of SPEC (pending needs a catalogue search)."""
    from .status import job_status

    spec = _load(spec_path, output)
    st = job_status(spec, search=not offline)
    if as_json:
        click.echo(json.dumps(st.as_dict(), default=str))
        return
    pending = "?" if offline else str(len(st.pending))
    click.echo(f"job {st.job} ({st.out_dir}): {len(st.done)} done, {pending} pending, {len(st.failed)} failed"
               + (f", {st.done_elsewhere} more masks outside the current search" if st.done_elsewhere else ""))
    if st.running:
        click.echo(f"running now: pid {st.running.get('pid')} on {st.running.get('host')} "
                   f"since {st.running.get('since')}")
    if show_list:
        for sid in st.pending:
            click.echo(f"pending  {sid}")
    for sid, err in st.failed.items():
        click.echo(f"failed   {sid}: {err}")


if __name__ == "__main__":  # pragma: no cover
    job(prog_name="cloudmask job", args=sys.argv[1:])
