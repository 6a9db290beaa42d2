"""STAC API back-end: item search through pystac-client, with bounded time on every request.

Every HTTP request gets a connect and a read timeout (:class:`HttpPolicy`). A request that times
out, cannot connect, gets HTTP 429/5xx, or gets an answer that is not a JSON object (a proxy's HTML
page, a truncated document) is retried with backoff through :func:`cloudmask.retry.call`; when the
retries are spent, the search fails with :class:`~cloudmask.errors.CatalogUnreachableError` (CLI:
one ``error:`` line, exit 4). Cloud cover goes to the server as a CQL2-JSON ``filter`` on
``eo:cloud_cover``, never as ``query`` (several servers silently ignore it); answers are checked
against the query locally as well.

Settings: ``HttpPolicy(connect_timeout=10, read_timeout=20, retry=RetryPolicy(count=3, ...))`` by
default, or from the environment (``CLOUDMASK_HTTP_TIMEOUT`` = ``READ`` or ``CONNECT,READ`` seconds,
``CLOUDMASK_HTTP_RETRIES`` = retries after the first attempt). With the defaults a server that
accepts connections and never answers fails a search after about 4 x 20 s + 3.5 s of backoff.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from pystac_client.warnings import DoesNotConformTo, NoConformsTo

from .. import retry as _retry
from ..errors import CatalogError, CatalogUnreachableError, ConfigError
from .dedupe import collect, sort_items
from .query import SearchQuery

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_HTTP", "HttpPolicy", "search_api"]

TIMEOUT_ENV = "CLOUDMASK_HTTP_TIMEOUT"
RETRIES_ENV = "CLOUDMASK_HTTP_RETRIES"
#: HTTP status codes worth another try.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpPolicy:
    """Time limits (seconds) and retries of each STAC API request.

    ``connect_timeout``: to open the connection; ``read_timeout``: the longest silence while waiting
    for (each part of) the answer; ``retry``: retries after the first attempt, with backoff.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    retry: _retry.RetryPolicy = field(default_factory=lambda: _retry.RetryPolicy(count=3, backoff=0.5, backoff_max=8.0))

    def __post_init__(self) -> None:
        if not (self.connect_timeout > 0 and self.read_timeout > 0):
            raise ConfigError(f"HTTP timeouts must be > 0 seconds, got {self.connect_timeout}, {self.read_timeout}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HttpPolicy:
        """The default policy, overridden by ``CLOUDMASK_HTTP_TIMEOUT`` / ``CLOUDMASK_HTTP_RETRIES``."""
        env = os.environ if environ is None else environ
        return cls().with_overrides(env.get(TIMEOUT_ENV) or None, env.get(RETRIES_ENV) or None,
                                    names=(TIMEOUT_ENV, RETRIES_ENV))

    def with_overrides(self, timeout: str | float | None = None, retries: str | int | None = None,
                       names: tuple[str, str] = ("timeout", "retries")) -> HttpPolicy:
        """This policy with ``timeout`` (``READ`` or ``CONNECT,READ`` seconds; a lone value caps the
        connect timeout too) and/or ``retries`` replaced; ``names`` name them in errors."""
        connect, read, rp = self.connect_timeout, self.read_timeout, self.retry
        if timeout is not None:
            try:
                parts = [float(v) for v in str(timeout).split(",")]
                if len(parts) not in (1, 2) or not all(0 < v < 1e6 for v in parts):
                    raise ValueError
            except ValueError as err:
                raise ConfigError(f"{names[0]} must be READ or CONNECT,READ in seconds (> 0), got {timeout!r}") from err
            connect, read = (min(connect, parts[0]), parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        if retries is not None:
            try:
                count = int(retries)
                if not 0 <= count <= 100:
                    raise ValueError
            except ValueError as err:
                raise ConfigError(f"{names[1]} must be a whole number 0-100, got {retries!r}") from err
            rp = _retry.RetryPolicy(count=count, backoff=rp.backoff, backoff_max=rp.backoff_max)
        return HttpPolicy(connect, read, rp)

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` as ``requests`` takes it."""
        return self.connect_timeout, self.read_timeout


DEFAULT_HTTP = HttpPolicy()


class BadPageError(CatalogError):
    """A STAC API answered 200 with something that is not a JSON object (HTML, truncated JSON)."""


def _retryable(err: BaseException) -> bool:
    if isinstance(err, BadPageError | requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(err, APIError):
        status = getattr(err, "status_code", None)
        return status is None or int(status) in RETRY_STATUS  # no status: a transport error pystac-client wrapped
    return False


class _StacIO(StacApiIO):
    """pystac-client's I/O with timeouts that stick, and retries on transport errors and bad pages.

    ``Client.open(url, stac_io=...)`` calls ``stac_io.update(timeout=None)``, which would wipe the
    timeout; :meth:`update` keeps it. Retries wrap :meth:`read_json` (landing page, every search
    page) so that a 200 answer that does not parse is retried like a 5xx.
    """

    def __init__(self, http: HttpPolicy, headers: Mapping[str, str] | None) -> None:
        super().__init__(headers=dict(headers or {}), timeout=http.timeout, max_retries=0)
        self.http = http

    def update(self, headers: dict[str, str] | None = None, parameters: dict[str, Any] | None = None,
               request_modifier: Any = None, timeout: Any = None) -> None:
        super().update(headers=headers, parameters=parameters, request_modifier=request_modifier,
                       timeout=timeout or self.http.timeout)

    def read_json(self, source: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        href = source.href if isinstance(source, pystac.Link) else str(source)
        link_method = source.extra_fields.get("method") if isinstance(source, pystac.Link) else None
        method = str(kwargs.get("method") or link_method or "GET").upper()

        def once() -> dict[str, Any]:
            text = self.read_text(source, *args, **kwargs)
            try:
                doc = json.loads(text)
            except ValueError as err:
                raise BadPageError(f"{href} answered with something that is not JSON ({err}): "
                                   f"{_snippet(text)}") from err
            if not isinstance(doc, dict):
                raise BadPageError(f"{href} answered with JSON that is not an object: {_snippet(text)}")
            return doc

        try:
            return _retry.call(once, self.http.retry, _retryable, f"{method} {href}")
        except Exception as err:
            if _retryable(err):
                raise CatalogUnreachableError(
                    f"STAC API request {method} {href} failed after {self.http.retry.count} retries ({_short(err)}); "
                    "check the URL and your network, raise CLOUDMASK_HTTP_TIMEOUT/CLOUDMASK_HTTP_RETRIES, "
                    "or try again later"
                ) from err
            raise


class _StaticIO(_StacIO):
    """:class:`_StacIO` for a static catalogue: the same timeouts and retries, plain pystac objects
    (pystac-client's I/O would make every child a client that warns it falls back to pystac)."""

    def stac_object_from_dict(self, d: dict[str, Any], href: Any = None, root: Any = None,
                              preserve_dict: bool = True) -> Any:
        return pystac.StacIO.stac_object_from_dict(self, d, href=href, root=root, preserve_dict=preserve_dict)


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat[:80] + ("..." if len(flat) > 80 else ""))


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:300]


def search_api(
    url: str,
    query: SearchQuery,
    http: HttpPolicy = DEFAULT_HTTP,
    headers: Mapping[str, str] | None = None,
) -> list[pystac.Item]:
    """Items of the STAC API at ``url`` matching ``query``: paged, checked locally, deduplicated,
    at most ``query.limit`` scenes, sorted by ``query.sortby`` (locally too, for servers without it)."""
    try:
        with warnings.catch_warnings():  # a static catalogue advertises no conformance: handled below
            warnings.simplefilter("ignore", NoConformsTo)
            client = Client.open(url, stac_io=_StacIO(http, headers))
    except CatalogError:
        raise
    except Exception as err:  # noqa: BLE001 - anything else pystac(-client) raises on the landing page
        raise CatalogError(f"cannot open STAC API {url}: {_short(err)}") from err

    kwargs = {"max_items": None, "limit": 100, **query.api_params()}

    try:
        items = collect(_matching(client.search(**kwargs).items(), query), query.limit)
    except CatalogError:
        raise
    except DoesNotConformTo:  # no item search: a static catalogue served over HTTP, read and filtered here
        log.info("%s has no item search: reading it as a static catalogue", url)
        from .static import search_static_url

        return search_static_url(url, query, _StaticIO(http, headers))
    except APIError as err:
        raise CatalogError(f"STAC API {url} refused the search: {_short(err)}") from err
    except (pystac.STACError, KeyError, ValueError, TypeError) as err:
        raise CatalogError(f"STAC API {url} answered with an item that is not valid STAC: {_short(err)}") from err
    # servers that ignore sortby (an optional extension) still give a sorted answer
    return sort_items(items, query.sortby) if query.sortby else items


def _matching(items: Iterator[pystac.Item], query: SearchQuery) -> Iterator[pystac.Item]:
    for item in items:
        if query.match(item):
            yield item
        else:
            log.debug("server returned %s that does not pass the filters; dropped", item.id)
