"""API keys: which one a request presents, and whether it is one of the configured keys.

One rule for every door: the HTTP routes (`app.api.deps.require_api_key`), the `/live` WebSocket
(`app.api.routers.live`, which also reads `?api_key=`, as a browser's WebSocket cannot set headers) and a
worker's live endpoint (`worker.live.server`, which the API calls with the client's key). Torch-free.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def presented_key(headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str | None:
    """`X-API-Key: <key>`, else `Authorization: Bearer <key>`, else (when given) the `api_key` query value."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return (query or {}).get("api_key") or None


def key_accepted(keys: list[str], presented: str | None) -> bool:
    """True when no key is configured, or `presented` is one of `keys`. Every key is compared, in constant
    time, so the answer's timing says nothing about which prefix matched."""
    if not keys:
        return True
    if presented is None:
        return False
    given = presented.encode("utf-8", "surrogateescape")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key.encode("utf-8", "surrogateescape"))
    return ok


def key_id(presented: str | None) -> str | None:
    """A stable, non-secret id of an API key (the first 16 hex digits of its SHA-256), stored with a job so
    that `GET /jobs` lists the caller's own jobs without keeping the key itself; None without a key."""
    if not presented:
        return None
    return hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()[:16]
