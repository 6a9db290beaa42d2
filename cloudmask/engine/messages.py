"""What engine threads send each other: small dataclasses instead of string-tagged tuples.

Producer -> device pool: :class:`Batch`. Producer -> blender: :class:`RowCut` (patch kinds) or
:class:`StripCut` (pixel models), always sent before any batch holding its work, so the blender knows
what to wait for. Device pool -> blender: :class:`Scores`, and one :class:`DeviceDone` per device thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .stats import StreamStats


@dataclass(frozen=True, slots=True)
class PatchTask:
    """Patch ``col`` of patch row ``row`` of a :class:`~cloudmask.grid.PatchLayout`."""

    row: int
    col: int


@dataclass(frozen=True, slots=True)
class PixelRun:
    """``count`` valid pixels of strip ``strip``, from its ``start``-th valid pixel, at ``offset`` in a block."""

    strip: int
    start: int
    count: int
    offset: int


Task = PatchTask | PixelRun


@dataclass(frozen=True, slots=True)
class Batch:
    """One device call's input: ``array`` in the runner's shape, holding ``tasks``.

    ``filled`` is the number of samples that carry data (patches, or pixels of a pixel block); the
    rest is padding. ``array`` belongs to the engine's buffer pool: the device thread returns it
    after the call.
    """

    tasks: Sequence[Task]
    array: np.ndarray
    filled: int


@dataclass(frozen=True, slots=True)
class Scores:
    """The runner's output for the tasks of one batch (valid until the runner's next call)."""

    tasks: Sequence[Task]
    scores: np.ndarray
    filled: int


@dataclass(frozen=True, slots=True)
class RowCut:
    """Patch row ``row`` was cut into ``expected`` non-empty patches (columns ``cols``).

    ``valid`` is the valid-pixel mask of the scene rows of the row's core block (``rows x width``).
    """

    row: int
    expected: int
    cols: tuple[int, ...]
    valid: np.ndarray


@dataclass(frozen=True, slots=True)
class StripCut:
    """Pixel strip ``strip`` covers scene rows ``[row, row + rows)``; ``index`` are its valid pixels (flat, row-major).

    The valid pixels go to the device in this order; the rest of the strip is nodata. ``index`` None:
    every pixel of the strip is valid (no index array is built). ``count``: the number of valid pixels
    (default ``index.size``).
    """

    strip: int
    row: int
    rows: int
    index: np.ndarray | None
    count: int = -1

    def __post_init__(self) -> None:
        if self.count < 0:
            if self.index is None:
                raise ValueError("StripCut needs count when index is None (every pixel valid)")
            object.__setattr__(self, "count", int(self.index.size))


@dataclass(frozen=True, slots=True)
class DeviceDone:
    """A device thread finished; ``stats`` are its own counts and seconds."""

    stats: StreamStats


BlenderMessage = Scores | RowCut | StripCut | DeviceDone
