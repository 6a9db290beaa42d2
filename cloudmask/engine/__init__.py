"""The streaming engine: a producer reads and cuts, a device pool runs, a blender assembles.

Rooms: :mod:`.messages` (what threads send each other), :mod:`.producer` (read, normalise, cut,
batch), :mod:`.devices` (one thread per runner), :mod:`.blender` (scores -> finished row blocks, no
threads), :mod:`.strategies` (one cutting/blending strategy per model kind), :mod:`.stream` (the
wiring), :mod:`.io` (source/sink contracts), :mod:`.stats` (per-stage seconds, device-call budget).
"""

from __future__ import annotations

from .blender import Block, PatchBlender, PatchClassBlender, PixelBlender, softmax
from .io import ArraySink, ArraySource, MaskSink, PatchSource
from .stats import StreamStats
from .strategies import output_geobox, output_shape
from .stream import StreamConfig, stream_scene

__all__ = [
    "ArraySink",
    "ArraySource",
    "Block",
    "MaskSink",
    "PatchBlender",
    "PatchClassBlender",
    "PatchSource",
    "PixelBlender",
    "StreamConfig",
    "StreamStats",
    "output_geobox",
    "output_shape",
    "softmax",
    "stream_scene",
]
