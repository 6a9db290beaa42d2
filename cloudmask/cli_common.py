"""Pieces shared by the command groups (kept apart from :mod:`cloudmask.cli` to avoid import cycles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from .atomic import is_no_space, write_error
from .console import error
from .errors import CloudmaskError


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
    cells = [["" if r.get(c) is None else str(r.get(c))[:max_width] for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[k]) for row in cells]) for k, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)
