"""Scale-out on dask.distributed: scenes as tasks on an existing cluster or a LocalCluster.

Each task is :func:`cloudmask.jobs.runner.process_scene`; a worker process loads each model once
(the runner cache is a module global of that process) and writes masks straight into the output
directory, which must be the same path on every worker (a shared or network file system). Masks
are renamed into place only when complete, so a worker lost mid-scene leaves at most a stale
temporary, removed by the next run. The driver records results, the journal and the catalogue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, JobError
from .runner import Executor, SceneOutcome, TaskSettings, process_scene

log = logging.getLogger(__name__)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:  # pragma: no cover - declared dependency
        raise ConfigError("--scheduler/--workers need dask.distributed: pip install distributed") from err
    return distributed


def dask_executor(scheduler: str | None = None, workers: int | None = None, threads: int = 1) -> Executor:
    """An executor running scenes on ``scheduler`` (``tcp://host:port``) or on ``workers`` local processes.

    ``threads``: scenes per worker process at a time (a LocalCluster's ``threads_per_worker``).
    """
    if scheduler is None and (workers is None or workers < 1):
        raise ConfigError("give --scheduler tcp://HOST:PORT or --workers N (N >= 1)")

    def run(payloads: list[dict[str, Any]], settings: TaskSettings) -> Iterator[SceneOutcome]:
        distributed = _import_distributed()
        cluster = None
        try:
            if scheduler is not None:
                try:
                    client = distributed.Client(scheduler, timeout="30s")
                except (OSError, TimeoutError) as err:
                    raise JobError(f"cannot reach the dask scheduler at {scheduler}: {err}; is it running?") from err
            else:
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=max(1, threads), processes=True,
                    dashboard_address=None, silence_logs=logging.WARNING,
                )
                client = distributed.Client(cluster)
            with client:
                log.info("running %d scene(s) on %s", len(payloads), client.scheduler.address)
                futures = {
                    client.submit(process_scene, p, settings, pure=False,
                                  key=f"cloudmask-scene-{k}-{p['id'][:60]}"): p["id"]
                    for k, p in enumerate(payloads)
                }
                for fut in distributed.as_completed(futures):
                    scene = futures[fut]
                    try:
                        yield fut.result()
                    except Exception as err:  # noqa: BLE001 - a lost worker fails one scene, not the job
                        yield SceneOutcome(scene=scene, ok=False, error=f"dask task failed: {type(err).__name__}: {err}",
                                           error_type=type(err).__name__)
                    finally:
                        fut.release()
        finally:
            if cluster is not None:
                cluster.close()

    return run


def worker_loads(client: Any) -> dict[str, dict[str, int]]:
    """Model loads per worker address (each worker should show 1 per model it used)."""
    from .runner import runner_loads

    return dict(client.run(runner_loads))
