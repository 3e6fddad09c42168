"""Jobs per status, counted cheaply (the backlog check runs on every submission, the gauges on every scrape)."""

from __future__ import annotations

import threading
from pathlib import Path

from worker.core.contracts import JobStatus
from worker.core.jobstore import JobNotFound, JobStore


class StatusCounter:
    """Jobs per status, for the backlog check (every submission) and the scrape-time gauges.

    Reading every record costs a file per job. Finished states are terminal, so a job seen finished
    once is remembered (its id and status) and its record is never read again: a count costs one
    directory listing plus a read of each queued/running record, however many finished jobs the TTL
    keeps. Ids that disappear (expired) are forgotten.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._final: dict[str, str] = {}
        self._lock = threading.Lock()

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        seen: set[str] = set()
        for job_id in self.store.list_ids():
            seen.add(job_id)
            status = self._final.get(job_id)
            if status is None:
                try:
                    status = self.store.get(job_id).status.value
                except (JobNotFound, ValueError):
                    continue  # removed or rewritten right now
                if status in _FINISHED:
                    self._final[job_id] = status
            counts[status] = counts.get(status, 0) + 1
        with self._lock:
            for job_id in [j for j in self._final if j not in seen]:
                self._final.pop(job_id, None)
        return counts


_FINISHED = frozenset(s.value for s in JobStatus if s.finished)
_counters: dict[Path, StatusCounter] = {}
_counters_lock = threading.Lock()


def status_counter(store: JobStore) -> StatusCounter:
    with _counters_lock:
        counter = _counters.get(store.root)
        if counter is None or counter.store is not store:
            counter = _counters[store.root] = StatusCounter(store)
        return counter
