"""Axelera Metis toolchain: static batch-1 export, op-support check, calibration set, INT8 preview.

Facts about the compiler come from the Voyager SDK docs (``cloudmask/data/metis_ops.json``). The
Voyager SDK itself is not needed here: ``compile.py`` written by :func:`export` runs where it is.
"""

from __future__ import annotations

from .calibration import CalibrationPatch, StrataRules, calibration_set, calibration_set_from_stac
from .check import CheckReport, check
from .export import ExportResult, export
from .int8 import Int8Report, int8_preview

__all__ = [
    "CalibrationPatch",
    "CheckReport",
    "ExportResult",
    "Int8Report",
    "StrataRules",
    "calibration_set",
    "calibration_set_from_stac",
    "check",
    "export",
    "int8_preview",
]
