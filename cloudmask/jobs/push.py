"""Push the output catalogue to a STAC API through the Transactions extension.

The collection is created (``POST /collections``) or updated (``PUT /collections/{id}``, so its
extents follow the items); each item is created (``POST /collections/{id}/items``) or replaced on a
409 (``PUT /collections/{id}/items/{item}``). What was pushed is journalled with the item's version
(mask checksum and time made), so items are pushed once, re-pushed when re-made, and a push interrupted by a crash or an
unreachable API is completed by the next run.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
import requests

from .. import retry as _retry
from ..errors import CatalogUnreachableError
from ..output_catalog import load_items
from ..retry import RetryPolicy
from ..stac.api import RETRY_STATUS, HttpPolicy
from .spec import JobSpec
from .state import Journal

log = logging.getLogger(__name__)


@dataclass
class PushResult:
    pushed: int = 0
    failed: dict[str, str] = field(default_factory=dict)


class _RetryStatus(Exception):
    """An answer worth another try (HTTP 429/5xx); carries the response for the final report."""

    def __init__(self, resp: requests.Response) -> None:
        super().__init__(f"HTTP {resp.status_code}")
        self.resp = resp


class StacTransactions:
    """A small client for the STAC API Transactions extension (requests; timeouts and retries as for
    searching, through :mod:`cloudmask.retry`)."""

    def __init__(self, url: str, retry: RetryPolicy | None = None, http: HttpPolicy | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = http or HttpPolicy.from_env()
        self.retry = retry or self.http.retry
        self.session = requests.Session()
        self.session.headers.update({"Content-Type": "application/json", **(headers or {})})

    def _request(self, method: str, path: str, doc: Any = None) -> requests.Response:
        url = self.url + path

        def once() -> requests.Response:
            resp = self.session.request(method, url, data=None if doc is None else json.dumps(doc),
                                        timeout=self.http.timeout)
            if resp.status_code in RETRY_STATUS:
                raise _RetryStatus(resp)
            return resp

        try:
            return _retry.call(once, self.retry, lambda e: isinstance(e, requests.RequestException | _RetryStatus),
                               f"{method} {url}")
        except _RetryStatus as err:
            return err.resp
        except requests.RequestException as err:
            raise CatalogUnreachableError(f"STAC API {self.url} did not answer {method} {path}: {err}") from err

    def _check(self, resp: Any, what: str) -> None:
        if resp.status_code >= 400:
            hint = " (is the Transactions extension enabled on the server?)" if resp.status_code in (404, 405) else ""
            raise CatalogUnreachableError(f"{what}: HTTP {resp.status_code} {resp.text[:300]}{hint}")

    def upsert_collection(self, doc: dict[str, Any]) -> None:
        cid = doc["id"]
        resp = self._request("GET", f"/collections/{cid}")
        if resp.status_code == 404:
            resp = self._request("POST", "/collections", doc)
            if resp.status_code != 409:
                self._check(resp, f"creating collection {cid}")
                return
        resp = self._request("PUT", f"/collections/{cid}", doc)
        if resp.status_code in (404, 405):
            resp = self._request("PUT", "/collections", doc)  # older stac-fastapi
        self._check(resp, f"updating collection {cid}")

    def upsert_item(self, collection: str, doc: dict[str, Any]) -> None:
        resp = self._request("POST", f"/collections/{collection}/items", doc)
        if resp.status_code == 409:
            resp = self._request("PUT", f"/collections/{collection}/items/{doc['id']}", doc)
        self._check(resp, f"pushing item {doc['id']}")


def _href(out: Path, href: str, public_url: str | None, base: Path) -> str:
    if href.startswith(("http://", "https://", "s3://", "/")):
        return href
    path = (base / href).resolve()
    if public_url:
        try:
            rel = path.relative_to(out.resolve())
        except ValueError:
            return str(path)
        return public_url.rstrip("/") + "/" + rel.as_posix()
    return str(path)


def api_item(out: Path, item_path: Path, public_url: str | None = None) -> dict[str, Any]:
    """An output item as a STAC API wants it: absolute asset hrefs, no file-relative links."""
    doc = json.loads(item_path.read_text())
    for asset in doc.get("assets", {}).values():
        asset["href"] = _href(out, asset["href"], public_url, item_path.parent)
    doc["links"] = [lk for lk in doc.get("links", []) if lk.get("rel") not in ("self", "root", "parent", "collection")]
    return doc


def api_collection(out: Path) -> dict[str, Any]:
    doc = json.loads((out / "collection.json").read_text())
    doc["links"] = [lk for lk in doc.get("links", [])
                    if lk.get("rel") not in ("self", "root", "parent", "item", "child")]
    return dict(doc)


def item_version(item: pystac.Item) -> str:
    """What identifies one version of an output item: its mask checksum and when it was made."""
    return f"{item.assets['mask'].extra_fields.get('file:checksum')}@{item.properties.get('updated')}"


def push_pending(spec: JobSpec, journal: Journal, run_id: str = "") -> PushResult:
    """Push every output item whose current version was not pushed yet; returns counts and errors."""
    assert spec.push_to is not None
    out = Path(spec.output)
    done = journal.pushed()
    todo: list[tuple[pystac.Item, str, Path]] = []
    for it in load_items(out):
        scene = str(it.properties.get("cloudmask:source_id", it.id))
        version = item_version(it)
        if done.get(scene) != version:
            todo.append((it, version, out / "items" / f"{it.id}.json"))
    result = PushResult()
    if not todo:
        return result
    client = StacTransactions(spec.push_to, spec.retries, spec.http_policy())
    coll = api_collection(out)
    try:
        client.upsert_collection(coll)
    except CatalogUnreachableError as err:
        for it, _, _ in todo:
            result.failed[it.id] = str(err)
        journal.append("push-failed", run=run_id, error=str(err), items=len(todo))
        return result
    for it, version, path in todo:
        scene = str(it.properties.get("cloudmask:source_id", it.id))
        try:
            client.upsert_item(coll["id"], api_item(out, path, spec.public_url))
        except CatalogUnreachableError as err:
            result.failed[scene] = str(err)
            journal.append("push-failed", run=run_id, scene=scene, error=str(err))
            continue
        journal.append("pushed", run=run_id, scene=scene, item=it.id, version=version, url=spec.push_to)
        result.pushed += 1
    log.info("pushed %d item(s) to %s (%d failed)", result.pushed, spec.push_to, len(result.failed))
    return result
