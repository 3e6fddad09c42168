"""Jobs per status, counted cheaply (the backlog check runs on every submission, the gauges on every scrape).

The counts come from the state store's status index in Redis (`RedisJobStore.status_counts`: one SCARD per
status, whatever the number of jobs) and its upload reservations, in one snapshot, not from reading
records or scanning the data volume (issue #24).
"""

from __future__ import annotations

import threading

from worker.core.jobstore import JobStore
from worker.core.state.redis_store import UPLOADING

__all__ = ["UPLOADING", "StatusCounter", "status_counter"]


class StatusCounter:
    """Jobs per status of one store, for the backlog gauges and the REST streams' admission."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def counts(self, *, uploads_max_age_s: float | None = None, now: float | None = None) -> dict[str, int]:
        """`{status: jobs}` for every `JobStatus`; with `uploads_max_age_s` (kept for callers: a reservation's
        age limit is set when it is made), also `UPLOADING`: the live upload reservations. Raises
        `StateUnavailable` when Redis does not answer."""
        return self.store.status_counts(uploads=uploads_max_age_s is not None, now=now)


_counters: dict[int, StatusCounter] = {}
_counters_lock = threading.Lock()


def status_counter(store: JobStore) -> StatusCounter:
    """The counter of `store` (one per store object)."""
    with _counters_lock:
        counter = _counters.get(id(store))
        if counter is None or counter.store is not store:
            counter = _counters[id(store)] = StatusCounter(store)
        return counter
