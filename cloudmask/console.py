"""What the command line shows on stderr: log lines, notes, progress bars and errors.

Two formats (``cloudmask --log-format``):

* ``plain``: notes as plain lines, warnings and errors with their level, and (on a terminal) an overall
  bar over scenes with ETA above a per-scene bar over patches, drawn by rich so that log lines are
  printed above the bars, never glued to them;
* ``json``: every line on stderr is one JSON object (python-json-logger) with structured fields
  (``scene``, ``model``, ``seconds``, ``shares`` ...), errors included; no bars.

A warning is shown once per process however many scenes trigger it. The library only logs; this
module is the CLI's: it also holds the click group class every command group uses
(:class:`CloudmaskGroup`: errors to one line and their exit code) and :func:`table`, the one table
formatter (rich: fits the terminal, plain when piped).
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click
import numpy as np
from pythonjsonlogger.json import JsonFormatter
from rich import box
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
from rich.table import Table
from rich.text import Text

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
    """Lines a person reads (notes, per-scene results) bare; warnings and errors with level and logger;
    control characters escaped."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == NOTE or getattr(record, "event", None) is not None:
            return _escaped_message(record)
        return f"{record.levelname.lower()}: {_escaped_message(record)} [{record.name}]"


#: The keys of every JSON log line (docs/unattended.md): always present, in this order.
JSON_BASE = ("time", "level", "logger", "message", "event")
#: The keys of every per-scene line (``event: "scene"``), in ``run``, ``demo`` and ``job run`` alike;
#: always all present, ``null`` where they do not apply (e.g. ``error`` of a done scene).
SCENE_FIELDS = ("scene", "status", "model", "seconds", "cloud", "shadow", "thin_cloud", "snow", "clear",
                "nodata", "mask", "attempts", "error", "error_type", "exit_code")


class _JsonFormatter(JsonFormatter):
    """python-json-logger with ISO 8601 UTC timestamps (``2026-12-07T16:11:02.913Z``) and ``event`` always set."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        return stamp.replace("+00:00", "Z")

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        super().add_fields(log_data, record, message_dict)
        event = log_data.pop("event", None) or ("error" if record.levelno >= logging.ERROR else "log")
        rest = {k: log_data.pop(k) for k in list(log_data) if k not in JSON_BASE}
        log_data["event"] = event  # after time, level, logger, message; then the line's own fields
        log_data.update(rest)


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
        handler.setFormatter(_JsonFormatter(
            "{asctime}{levelname}{name}{message}", style="{", json_default=json_default,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        ))
    elif console().is_terminal:  # stderr is a terminal (rich decides, as it does for the bars)
        # no level column: notes and results are bare lines, warnings and errors say so themselves
        handler = RichHandler(console=console(), show_path=False, show_time=False, show_level=False,
                              markup=False, rich_tracebacks=False)
        handler.setFormatter(_PlainFormatter())
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
        logging.getLogger("cloudmask.cli").error(message, extra={"event": "error", "exit_code": exit_code})
    else:
        print(f"error: {escape_control(message)}", file=sys.stderr, flush=True)


def exit_code_of(error_type: str | None) -> int | None:
    """The exit code a run failing with the error class named ``error_type`` would end with (1: not ours)."""
    if error_type is None:
        return None
    from . import errors

    cls = getattr(errors, error_type, None)
    return cls.exit_code if isinstance(cls, type) and issubclass(cls, errors.CloudmaskError) else 1


def scene_result(row: Mapping[str, Any]) -> None:
    """The one line per finished scene, the same for ``run``, ``demo`` and ``job run``.

    ``row`` is a summary row (``status`` done | skipped | failed). Done and skipped scenes are notes;
    a failed scene is an ERROR with its ``error_type`` and ``exit_code`` (the code a run of that scene
    alone would end with). In JSON mode the line carries every key of :data:`SCENE_FIELDS`.
    """
    fields = {k: row.get(k) for k in SCENE_FIELDS}
    if fields["status"] == "failed" and fields["exit_code"] is None:
        fields["exit_code"] = exit_code_of(fields["error_type"] or "CloudmaskError")
    level = logging.ERROR if fields["status"] == "failed" else NOTE
    logging.getLogger("cloudmask.cli").log(level, _scene_line(fields), extra={"event": "scene", **fields})


def _scene_line(row: Mapping[str, Any]) -> str:
    """``done S2B_... in 4.2 s (cloud 12.3 %, shadow 1.0 %; percent of valid pixels)``."""
    if row["status"] == "failed":
        return f"failed {row['scene']}: {row.get('error') or ''}"
    if row["status"] == "skipped":
        return f"skipped {row['scene']}: a valid mask exists"
    shares = ", ".join(f"{k} {row[k]} %" for k in ("cloud", "thin_cloud", "shadow", "snow") if row.get(k) is not None)
    return f"done {row['scene']} in {row.get('seconds') or 0} s ({shares}; percent of valid pixels)"


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
            # every patch through the model: the COG, quicklook and item are being written
            writing = total > 0 and done >= total
            progress.update(task, completed=done, total=total,
                            description=f"  {label} writing" if writing else f"  {label}")

        try:
            yield update
        finally:
            progress.remove_task(task)
            progress.advance(self._overall)

    def skip(self) -> None:
        """Count a scene that needed no work."""
        if self._progress is not None:
            self._progress.advance(self._overall)


@contextmanager
def task_progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A one-line bar for a preparatory task (e.g. making the synthetic scenes): ``progress(done, total)``.

    ``None`` (nothing drawn) in JSON mode or when ``enabled`` is false.
    """
    if not enabled or is_json():
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console(), transient=True) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


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


#: Plain-text box for piped output: no borders, a dashed rule under the header, columns 2 spaces apart.
_PLAIN_BOX = box.Box("    \n    \n -  \n    \n    \n    \n    \n    \n", ascii=True)
#: Width of a table that is not shown on a terminal: wide enough that no cell is ever cut or wrapped.
_UNLIMITED = 100_000


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, drop_empty: bool = False,
          width: int | None = None) -> str:
    """Rows of dicts as a table (rich.Table), columns in ``columns`` order (default: the first row's keys).

    On a terminal (stdout) it fits the terminal's width (cells wrap, never cut) and the header is bold;
    otherwise (piped, a file, a notebook) it is plain text on one line per row, a header and a dashed rule,
    whatever the width. ``width`` (characters) forces a width; ``drop_empty`` leaves out columns with no
    value in any row. Numeric columns are right-aligned.
    """
    cols = list(columns) if columns is not None else list(rows[0]) if rows else []
    cols = [c for c in cols if not drop_empty or any(r.get(c) not in (None, "") for r in rows)]
    terminal = width is None and sys.stdout.isatty()
    t = Table(box=box.SIMPLE_HEAD if terminal else _PLAIN_BOX, show_edge=False, pad_edge=False,
              padding=(0, 1) if terminal else (0, 1, 0, 0), header_style="bold" if terminal else "",
              collapse_padding=True)
    for c in cols:
        numeric = all(_is_number(r.get(c)) for r in rows if r.get(c) not in (None, ""))
        t.add_column(Text(c), justify="right" if numeric and rows else "left", overflow="fold")
    for r in rows:
        t.add_row(*(Text("" if r.get(c) is None else escape_control(str(r.get(c)))) for c in cols))  # no markup
    buf = io.StringIO()
    out = Console(file=buf, width=width or (shutil.get_terminal_size().columns if terminal else _UNLIMITED),
                  force_terminal=terminal, color_system="standard" if terminal else None, highlight=False,
                  soft_wrap=False, force_jupyter=False)
    out.print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float | np.integer | np.floating):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True
