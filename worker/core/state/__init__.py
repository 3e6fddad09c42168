"""Where the coordination state lives: job records, their locks, leases (`worker.core.leases`) and admission.

One backend (issue #24): records, locks, fencing, admission and upload reservations in Redis
(`worker.core.state.redis_store`), the broker's Redis unless `AVS_STATE_URL` names another; in the embedded
default that is the private Redis `avs serve` starts (`worker.core.private_redis`). Keys start with
`AVS_STATE_PREFIX` (default `avs:state:`), so several deployments (and tests) can share one Redis. The media
(uploads, mask lines, overlays) stays on the data volume until the next issue (`worker.core.state.media`).

`open_store` is the one place a process builds its store. Torch-free.
"""

from __future__ import annotations

import threading

from worker.core.settings import ServiceSettings
from worker.core.state.errors import (
    JobLocked,
    JobNotFound,
    StaleWrite,
    StateLost,
    StateStorageFull,
    StateUnavailable,
)
from worker.core.state.redis_store import RedisJobStore

__all__ = ["JobLocked", "JobNotFound", "StaleWrite", "StateLost", "StateStorageFull", "StateUnavailable",
           "close_stores", "open_store", "state_url"]


def state_url(settings: ServiceSettings) -> str:
    """The Redis of the state: `AVS_STATE_URL`, else the broker's (the private one in embedded mode).
    `StateUnavailable` when none is known yet (the private Redis has not been started)."""
    from worker.core.private_redis import broker_url

    url = settings.state_url or broker_url(settings)
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        raise StateUnavailable(f"the state store needs a Redis: AVS_STATE_URL or a Redis broker "
                               f"(got {url!r}; start `avs serve` for the private one)")
    return url


_stores: dict[tuple[str, ...], RedisJobStore] = {}
_stores_lock = threading.Lock()


def open_store(settings: ServiceSettings, folder: str = "jobs") -> RedisJobStore:
    """The store of `folder` (`jobs`, or `streams` for the REST streams), one per process and place (a store
    keeps a connection pool; `app.api.counts` caches per store). Raises `StateUnavailable` when the Redis does
    not answer (or none is known yet), `StateLost` / `ValueError` when it is unfit."""
    url = state_url(settings)
    key = (str(settings.data_dir), folder, url, settings.state_prefix, str(settings.broker_timeout_s),
           str(settings.state_lock_ttl_s))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = RedisJobStore(settings.data_dir, url, folder, timeout_s=settings.broker_timeout_s,
                                  prefix=settings.state_prefix, lock_ttl_s=settings.state_lock_ttl_s)
            _stores[key] = store
        return store


def close_stores() -> None:
    """Forget every store `open_store` made in this process and close their connections (the tests, which give
    each test a key prefix of its own, call it so that one session does not keep a pool per test)."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.client.close()
