"""Where the coordination state lives: job records, their locks, leases (`worker.core.leases`) and admission.

Two backends with one API (`worker.core.jobstore.JobStore`), chosen by `AVS_STATE_BACKEND`:

* `files` (the default): `job.json` + `flock` on the data volume (`worker.core.jobstore.JobStore`).
* `redis`: records, locks, fencing and the admission lock in Redis (`worker.core.state.redis_store`), the
  broker's Redis unless `AVS_STATE_URL` names another; in the embedded default that is the private Redis
  `avs serve` starts (`worker.core.private_redis`).

`open_store` is the one place a process builds its store. Torch-free.
"""

from __future__ import annotations

import threading

from worker.core.jobstore import JobStore
from worker.core.settings import ServiceSettings
from worker.core.state.errors import StaleWrite, StateLost, StateUnavailable

__all__ = ["StaleWrite", "StateLost", "StateUnavailable", "open_store", "state_url"]


def state_url(settings: ServiceSettings) -> str:
    """The Redis of the state: `AVS_STATE_URL`, else the broker's (the private one in embedded mode).
    `StateUnavailable` when none is known yet (the private Redis has not been started)."""
    from worker.core.private_redis import broker_url

    url = settings.state_url or broker_url(settings)
    if not url or not url.startswith(("redis://", "rediss://", "unix://")):
        raise StateUnavailable(f"AVS_STATE_BACKEND=redis needs a Redis: AVS_STATE_URL or a Redis broker "
                               f"(got {url!r}; start `avs serve` for the private one)")
    return url


_stores: dict[tuple[str, ...], JobStore] = {}
_stores_lock = threading.Lock()


def open_store(settings: ServiceSettings, folder: str = "jobs") -> JobStore:
    """The store of `folder` (`jobs`, or `streams` for the REST streams) for these settings' backend, one per
    process and place (a store keeps a connection pool; `app.api.counts` caches per store). Raises
    `StateUnavailable` when the Redis does not answer, `StateLost` / `ValueError` when it is unfit."""
    url = state_url(settings) if settings.state_backend == "redis" else ""
    key = (settings.state_backend, str(settings.data_dir), folder, url, str(settings.broker_timeout_s),
           str(settings.state_lock_ttl_s))
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            if settings.state_backend == "redis":
                from worker.core.state.redis_store import RedisJobStore

                store = RedisJobStore(settings.data_dir, url, folder, timeout_s=settings.broker_timeout_s,
                                      lock_ttl_s=settings.state_lock_ttl_s)
            else:
                store = JobStore(settings.data_dir, folder)
            _stores[key] = store
        return store
