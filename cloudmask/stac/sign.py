"""Href signing, in one place: Planetary Computer blob hrefs get a SAS token.

Uses the optional ``planetary-computer`` package (``pip install 's2-cloudmask[planetary-computer]'``);
without it hrefs stay unsigned (public Sentinel-2 blobs need a token, so reads will then fail with
HTTP 403 naming the href). Used by :func:`cloudmask.profiles.scene_spec` for each band href of a
profile with ``"sign": "planetary-computer"``; search results are not signed in place, so items
written or pushed by cloudmask never carry short-lived tokens. :func:`sign_item` signs a copy of an
item for other readers (odc-stac, stackstac).
"""

from __future__ import annotations

import importlib
import logging

import pystac

log = logging.getLogger(__name__)

__all__ = ["SIGNERS", "sign_href", "sign_item"]

#: Signing schemes a profile may name in its ``sign`` field.
SIGNERS = ("planetary-computer",)


def sign_href(href: str, scheme: str | None) -> str:
    """``href`` signed under ``scheme`` (``None``: unchanged). Unsigned when signing is impossible."""
    if scheme is None:
        return href
    if scheme != "planetary-computer":
        raise ValueError(f"unknown signing scheme {scheme!r}; known: {', '.join(SIGNERS)}")
    if not href.startswith("https://") or "blob.core.windows.net" not in href:
        return href
    try:
        pc = importlib.import_module("planetary_computer")  # optional extra
    except ImportError:
        log.debug("planetary-computer not installed; leaving href %s unsigned", href)
        return href
    try:
        return str(pc.sign(href))
    except Exception as err:  # noqa: BLE001 - token service trouble: the read will say more
        log.warning("could not sign %s with planetary-computer: %s", href, err)
        return href


def sign_item(item: pystac.Item, scheme: str | None = "planetary-computer") -> pystac.Item:
    """A copy of ``item`` with every asset href signed under ``scheme`` (the item itself is unchanged)."""
    signed = item.clone()
    for asset in signed.assets.values():
        asset.href = sign_href(asset.get_absolute_href() or asset.href, scheme)
    return signed
