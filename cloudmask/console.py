"""What the command line shows on stderr: log lines, notes, progress bars and errors.

Two formats (``cloudmask --log-format``):

* ``plain``: notes as plain lines, warnings and errors with their level, and (on a terminal) an overall
  bar over scenes with ETA above a per-scene bar over patches, drawn by rich so that log lines are
  printed above the bars, never glued to them;
* ``json``: every line on stderr is one JSON object (python-json-logger) with structured fields
  (``scene``, ``model``, ``seconds``, ``shares`` ...), errors included; no bars.

A warning is shown once per process however many scenes trigger it. The library only logs; this
module is the CLI's: it also holds the click group class every command group uses
(:class:`CloudmaskGroup`: errors to one line and their exit code) and plain-text tables.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click
import numpy as np
from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .atomic import is_no_space, write_error
from .errors import CloudmaskError

#: Level of the CLI's notes (what it tells the user by default): between INFO and WARNING.
NOTE = 25
logging.addLevelName(NOTE, "NOTE")

_state: dict[str, Any] = {"format": "plain", "console": None}
_LOGGERS = ("cloudmask", "py.warnings")


def json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays, paths and anything else (never a numpy repr)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class _Once(logging.Filter):
    """Lets each warning (logger, message) through once per process."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``text`` with control characters (newline, carriage return, ESC ...) written as escapes (``\\n``),
    so that a value inside a message (an item id, an error) cannot start a forged line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _escaped_message(record: logging.LogRecord) -> str:
    """The record's message, escaped; a note logged with ``multiline=True`` keeps its own line breaks."""
    msg = record.getMessage()
    if getattr(record, "multiline", False):
        return "\n".join(escape_control(line) for line in msg.split("\n"))
    return escape_control(msg)


class _PlainFormatter(logging.Formatter):
    """Notes as bare lines; other levels with level and logger; control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == NOTE:
            return _escaped_message(record)
        return f"{record.levelname.lower()}: {_escaped_message(record)} [{record.name}]"


class _RichFormatter(logging.Formatter):
    """The message alone (rich adds the level), control characters escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return _escaped_message(record)


def console() -> Console:
    """The stderr console shared by log lines and progress bars."""
    if _state["console"] is None:
        _state["console"] = Console(stderr=True)
    return _state["console"]


def is_json() -> bool:
    return _state["format"] == "json"


def setup_logging(verbose: int = 0, fmt: str = "plain") -> None:
    """Configure the ``cloudmask`` logger for the CLI: ``verbose`` 0 notes, 1 info, 2 debug."""
    _state["format"] = fmt
    level = NOTE if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{", json_default=json_default,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    elif sys.stderr.isatty():
        handler = RichHandler(console=console(), show_path=False, show_time=False, markup=False,
                              rich_tracebacks=False)
        handler.setFormatter(_RichFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
    handler.addFilter(_Once())
    logging.captureWarnings(True)  # library warnings (pystac, rasterio) go through the same handler, once
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the libraries' business, not the user's
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level if name == "cloudmask" else logging.WARNING)
        logger.propagate = False


def note(message: str, **fields: Any) -> None:
    """Tell the user something (shown by default); ``fields`` travel as JSON fields in JSON mode."""
    logging.getLogger("cloudmask.cli").log(NOTE, message, extra=fields)


def error(message: str, exit_code: int) -> None:
    """The one ``error: ...`` line (a JSON object with ``exit_code`` in JSON mode)."""
    if is_json():
        logging.getLogger("cloudmask.cli").error(message, extra={"exit_code": exit_code})
    else:
        print(f"error: {escape_control(message)}", file=sys.stderr, flush=True)


class BatchProgress:
    """An overall bar over scenes (with ETA) and a bar over the current scene's patches.

    Disabled (every method a no-op) in JSON mode or when ``enabled`` is false.
    """

    def __init__(self, scenes: int, enabled: bool) -> None:
        self.enabled = enabled and not is_json()
        self._progress: Progress | None = None
        self._overall: Any = None
        self._scenes = scenes

    def __enter__(self) -> BatchProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TimeRemainingColumn(), console=console(), transient=False,
            )
            self._progress.start()
            self._overall = self._progress.add_task("scenes", total=self._scenes)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def scene(self, label: str) -> Iterator[Callable[[int, int], None] | None]:
        """A ``progress(done, total)`` callback over one scene's patches; advances the overall bar at the end."""
        if self._progress is None:
            yield None
            return
        progress = self._progress
        task = progress.add_task(f"  {label}", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            yield update
        finally:
            progress.remove_task(task)
            progress.advance(self._overall)

    def skip(self) -> None:
        """Count a scene that needed no work."""
        if self._progress is not None:
            self._progress.advance(self._overall)


class CloudmaskGroup(click.Group):
    """Turns :class:`CloudmaskError` into a one-line ``error: ...`` message and its exit code.

    A full disk is an ordinary failure too, wherever it strikes (a lock, a journal, a sidecar): it
    becomes a :class:`~cloudmask.errors.WriteError` (exit 7) instead of a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CloudmaskError as err:
            error(str(err), err.exit_code)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM (cloudmask.interrupt): one line, 128 + signal
            signum = int(getattr(err, "signum", signal.SIGINT))
            error(f"interrupted by {signal.Signals(signum).name}: the scenes in progress were stopped and their "
                  "partial files removed; finished masks are kept (run again with --skip-existing, or run the "
                  "job again, to go on)", 128 + signum)
            ctx.exit(128 + signum)
        except click.UsageError as err:  # a bad option value: one line, exit 2, the option named
            hint = f" (see `{err.ctx.command_path} --help`)" if err.ctx is not None else ""
            error(f"{err.format_message()}{hint}", err.exit_code)
            ctx.exit(err.exit_code)
        except Exception as err:
            if not is_no_space(err):
                raise
            wrapped = write_error(err, getattr(err, "filename", None) or "an output")
            error(str(wrapped), wrapped.exit_code)
            ctx.exit(wrapped.exit_code)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], drop_empty: bool = False,
          max_width: int = 80) -> str:
    """A plain-text table; ``drop_empty`` leaves out columns with no value in any row."""
    cols = [c for c in columns if not drop_empty or any(r.get(c) not in (None, "") for r in rows)]
    cells = [["" if r.get(c) is None else escape_control(str(r.get(c)))[:max_width] for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)
