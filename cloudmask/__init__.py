"""cloudmask: Sentinel-2 cloud and cloud-shadow masks from STAC catalogues.

The public API is loaded lazily (nothing heavy happens at import time)::

    import cloudmask
    mask = cloudmask.predict(reflectance, model="ukis-6b-l2a")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "predict": ".inference",
    "load_model": ".models",
    "list_models": ".models",
    "ModelCard": ".models",
    "CloudmaskError": ".errors",
    "StreamConfig": ".engine",
    "search": ".api",
    "open_scene": ".api",
    "mask_scene": ".api",
    "to_reflectance": ".dn",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'cloudmask' has no attribute {name!r}")
