"""Compatibility: the streaming engine moved to :mod:`cloudmask.engine`."""

from __future__ import annotations

from .engine import (
    ArraySink,
    ArraySource,
    MaskSink,
    PatchSource,
    StreamConfig,
    StreamStats,
    softmax,
    stream_scene,
)

__all__ = [
    "ArraySink",
    "ArraySource",
    "MaskSink",
    "PatchSource",
    "StreamConfig",
    "StreamStats",
    "softmax",
    "stream_scene",
]
