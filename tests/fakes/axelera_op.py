"""The emulated SDK 1.8 ``axelera.runtime.op``: :mod:`cloudmask.metis.fake_sdk.op`."""

from cloudmask.metis.fake_sdk.op import *  # noqa: F403
from cloudmask.metis.fake_sdk.op import Operator, load  # noqa: F401 - named for the tests
