"""Pieces shared by the command groups (kept apart from :mod:`cloudmask.cli` to avoid import cycles)."""

from __future__ import annotations

from typing import Any

import click

from .errors import CloudmaskError


class CloudmaskGroup(click.Group):
    """Turns :class:`CloudmaskError` into a one-line ``error: ...`` message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CloudmaskError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(err.exit_code)
