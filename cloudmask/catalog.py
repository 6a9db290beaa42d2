"""Compatibility names for code written against the old ``cloudmask.catalog`` module.

Searching lives in :mod:`cloudmask.stac` (query, static and API back-ends, signing); mapping items to
scenes in :mod:`cloudmask.profiles`. New code imports from those.
"""

from __future__ import annotations

from .profiles import detect_profile, get_profile, list_profiles, scene_spec
from .retry import RetryPolicy
from .stac import (
    ENDPOINTS,
    Endpoint,
    HttpPolicy,
    SearchQuery,
    dedupe,
    parse_aoi,
    parse_bbox,
    parse_datetime,
    search,
)

__all__ = [
    "ENDPOINTS",
    "Endpoint",
    "HttpPolicy",
    "RetryPolicy",
    "SearchQuery",
    "dedupe",
    "detect_profile",
    "get_profile",
    "list_profiles",
    "parse_aoi",
    "parse_bbox",
    "parse_datetime",
    "scene_spec",
    "search",
]
