"""One exception hierarchy for cloudmask.

Every error names the problem and what to do next; the CLI prints ``str(err)`` on one line and exits
with :attr:`CloudmaskError.exit_code`.
"""

from __future__ import annotations


class CloudmaskError(Exception):
    """Root of every error cloudmask raises on purpose."""

    exit_code: int = 1


class ConfigError(CloudmaskError):
    """A setting, argument or job spec is invalid."""

    exit_code = 2


class UnknownProfileError(ConfigError):
    """No provider profile has that name (``cloudmask profiles`` lists them)."""


class ModelError(CloudmaskError):
    """A model cannot be found, or its card or graph is invalid."""

    exit_code = 3


class UnknownModelError(ModelError):
    """No built-in model has that name and no file exists at that path."""


class ModelCardError(ModelError):
    """A model card is missing a field or has an invalid value."""


class CatalogError(CloudmaskError):
    """A STAC catalogue cannot be opened, searched or understood."""

    exit_code = 4


class CatalogNotFoundError(CatalogError):
    """A local catalogue path does not exist."""


class CatalogUnreachableError(CatalogError):
    """A STAC API did not answer after bounded retries."""


class ItemLayoutError(CatalogError):
    """A STAC item lacks the assets or metadata a model needs."""


class MissingBandError(ItemLayoutError):
    """A STAC item has no asset for a band the model needs."""


class ReadError(CloudmaskError):
    """A raster asset cannot be opened or read."""

    exit_code = 5


class GridError(CloudmaskError):
    """Rasters do not share a CRS/grid."""

    exit_code = 5


class RuntimeBackendError(CloudmaskError):
    """An inference backend is unavailable or failed."""

    exit_code = 6


class NonFiniteOutputError(RuntimeBackendError):
    """A model gave NaN or infinite scores: the scene is not masked (never read as "clear")."""


class WriteError(CloudmaskError):
    """An output cannot be written."""

    exit_code = 7


class JobError(CloudmaskError):
    """A catalogue job failed (lock held, some scenes failed, bad state)."""

    exit_code = 8


class JobLockedError(JobError):
    """Another run holds the job's lock (exit code 75, EX_TEMPFAIL: try again later)."""

    exit_code = 75


class SceneFailuresError(JobError):
    """The run finished but some scenes failed (exit code 8); the others are done."""


class StopRequested(CloudmaskError):
    """A scene stopped because the run was interrupted (SIGINT/SIGTERM; :mod:`cloudmask.interrupt`)."""

    exit_code = 130


class LeaseLostError(JobError):
    """A job task's run no longer holds the job's lock (its driver or scheduler is gone): nothing is published."""
