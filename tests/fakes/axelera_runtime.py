"""The emulated low-level ``axelera.runtime`` (SDK 1.6 onwards): :mod:`cloudmask.metis.fake_sdk.runtime`.

It ships in the package so that notebooks and docs can run through it too (``cloudmask.metis.fake_sdk.installed``).
"""

from cloudmask.metis.fake_sdk.runtime import *  # noqa: F403
from cloudmask.metis.fake_sdk.runtime import TensorInfo  # noqa: F401 - named for the tests
