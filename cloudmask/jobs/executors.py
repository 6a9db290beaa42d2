"""Where the scenes of a job run: threads of this process, or tasks on a dask.distributed cluster.

An :data:`Executor` takes the scene payloads (self-contained STAC item dicts) and the
:class:`~.task.TaskSettings`, runs :func:`~.task.process_scene` on each, and yields each
:class:`~.task.SceneOutcome` as it completes.

On dask (the optional ``distributed`` extra: ``pip install 's2-cloudmask[distributed]'``) each worker
process loads each model once (the runner cache is a module global of that process) and writes
masks straight into the output directory, which must be the same path on every worker (a shared or
network file system). Masks are renamed into place only when complete, so a worker lost mid-scene
leaves at most a stale temporary, removed by the next run. The driver records results, the journal
and the catalogue.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from ..errors import ConfigError, JobError
from .task import SceneOutcome, TaskSettings, process_scene

log = logging.getLogger(__name__)

__all__ = ["Executor", "dask_executor", "local_executor"]

Executor = Callable[[list[dict[str, Any]], TaskSettings], Iterator[SceneOutcome]]


def local_executor(concurrency: int) -> Executor:
    """Scenes in this process, ``concurrency`` at a time (threads sharing the cached models)."""

    def run(payloads: list[dict[str, Any]], settings: TaskSettings) -> Iterator[SceneOutcome]:
        if concurrency <= 1 or len(payloads) <= 1:
            for p in payloads:
                yield process_scene(p, settings)
            return
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cloudmask-scene")
        try:
            futures = [pool.submit(process_scene, p, settings) for p in payloads]
            for fut in as_completed(futures):
                yield fut.result()
        except BaseException:  # Ctrl-C/SIGTERM: scenes not started never start; those in flight stop cleanly
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)

    return run


def _import_distributed() -> Any:
    try:
        return importlib.import_module("distributed")  # optional extra
    except ImportError as err:
        raise ConfigError(
            "--scheduler/--workers (and a spec's scheduler) need dask.distributed: "
            "pip install 's2-cloudmask[distributed]'"
        ) from err


def dask_executor(scheduler: str | None = None, workers: int | None = None, threads: int = 1,
                  on_abort: Callable[[], None] | None = None) -> Executor:
    """Scenes as tasks on ``scheduler`` (``tcp://host:port``) or on ``workers`` local processes.

    ``threads``: scenes per worker process at a time (a LocalCluster's ``threads_per_worker``).
    ``on_abort`` runs first when the run is interrupted (Ctrl-C, SIGTERM): the job revokes its tasks'
    lease there, so the scenes in flight on the workers stop and publish nothing. Local worker
    processes ignore SIGINT (the driver shuts them down) and dask's shutdown chatter is not shown:
    an interrupted run says one line.
    """
    if scheduler is None and (workers is None or workers < 1):
        raise ConfigError("give --scheduler tcp://HOST:PORT or --workers N (N >= 1)")
    distributed = _import_distributed()

    def run(payloads: list[dict[str, Any]], settings: TaskSettings) -> Iterator[SceneOutcome]:
        cluster = None
        with contextlib.ExitStack() as quiet:  # interrupted: dask's teardown chatter is muted until the end
            try:
                if scheduler is not None:
                    try:
                        client = distributed.Client(scheduler, timeout="30s")
                    except (OSError, TimeoutError) as err:
                        raise JobError(f"cannot reach the dask scheduler at {scheduler}: {err}; is it running?") from err
                else:
                    cluster = _local_cluster(distributed, workers or 1, max(1, threads))
                    client = distributed.Client(cluster)
                # a lost scheduler fails each scene with the reason; the client's reconnect tracebacks add nothing
                with _quiet("distributed.client"), client:
                    try:
                        yield from _outcomes(distributed, client, payloads, settings)
                    except BaseException as err:
                        if on_abort is not None:
                            on_abort()  # first: the scenes in flight stop and publish nothing
                        if not isinstance(err, Exception):  # Ctrl-C/SIGTERM: one line, not dask's teardown
                            quiet.enter_context(_quiet("distributed"))
                            if cluster is not None:  # our own workers only (a shared cluster's stay as they are)
                                with contextlib.suppress(Exception):
                                    client.run(_mute_dask_logs)
                        raise
            finally:
                if cluster is not None:
                    cluster.close()

    return run


def _outcomes(distributed: Any, client: Any, payloads: list[dict[str, Any]],
              settings: TaskSettings) -> Iterator[SceneOutcome]:
    """Submit one task per scene; yield each outcome as it completes (a lost task fails its scene)."""
    log.info("running %d scene(s) on %s", len(payloads), client.scheduler.address)
    futures = {
        client.submit(process_scene, p, settings, pure=False, key=f"cloudmask-scene-{k}-{p['id'][:60]}"): p["id"]
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


def _mute_dask_logs() -> None:
    """Run on each local worker of an interrupted run: its shutdown says nothing."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def _local_cluster(distributed: Any, workers: int, threads: int) -> Any:
    """A LocalCluster of ``workers`` processes that ignore SIGINT (a terminal's Ctrl-C reaches the whole
    process group; the driver stops them), logging errors only."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:  # the worker processes are spawned now and keep SIGINT ignored
        return distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads, processes=True,
            dashboard_address=None, silence_logs=logging.ERROR,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Logger ``name`` shows only critical records inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
