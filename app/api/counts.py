"""Jobs per status, counted cheaply (the backlog check runs on every submission, the gauges on every scrape)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from worker.core.contracts import JobStatus
from worker.core.job_record import is_job_id
from worker.core.jobstore import JobNotFound, JobStore

UPLOADING = "uploading"
"""The key `StatusCounter.counts` adds for job folders without a record yet (an upload being received or probed)."""


class StatusCounter:
    """Jobs per status, for the backlog check (every submission) and the scrape-time gauges.

    Reading every record costs a file per job. Finished states are terminal, so a job seen finished
    once is remembered (its id and status) and its record is never read again: a count costs one
    directory listing plus a read of each queued/running record, however many finished jobs the TTL
    keeps. Ids that disappear (expired) are forgotten.

    One pass, one observation per folder: a folder is classified by a single read of its record (present:
    its status; absent: an upload in flight). Two passes (records, then record-less folders) would miss a
    job whose record is written between them (counted by neither), which let concurrent uploads past the
    backlog limit.
    """

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._final: dict[str, str] = {}
        self._lock = threading.Lock()

    def counts(self, *, uploads_max_age_s: float | None = None, now: float | None = None) -> dict[str, int]:
        """`{status: jobs}` for every `JobStatus`; with `uploads_max_age_s`, also `UPLOADING`: folders without
        a record touched within that many seconds (older ones are abandoned uploads the cleanup removes)."""
        now = time.time() if now is None else now
        counts = dict.fromkeys((s.value for s in JobStatus), 0)
        if uploads_max_age_s is not None:
            counts[UPLOADING] = 0
        seen: set[str] = set()
        for entry in self.store.root.iterdir():
            job_id = entry.name
            if not is_job_id(job_id):
                continue  # the admission lock file, temporary files
            seen.add(job_id)
            status = self._final.get(job_id)
            if status is None:
                try:
                    status = self.store.get(job_id).status.value
                except JobNotFound:
                    if uploads_max_age_s is not None and _fresh_folder(entry, uploads_max_age_s, now):
                        counts[UPLOADING] += 1
                    continue
                except ValueError:
                    continue  # unreadable record: neither waiting nor running
                if status in _FINISHED:
                    self._final[job_id] = status
            counts[status] = counts.get(status, 0) + 1
        with self._lock:
            for job_id in [j for j in self._final if j not in seen]:
                self._final.pop(job_id, None)
        return counts


def _fresh_folder(entry: Path, max_age_s: float, now: float) -> bool:
    try:
        return entry.is_dir() and now - entry.stat().st_mtime < max_age_s
    except FileNotFoundError:
        return False  # removed while we looked


_FINISHED = frozenset(s.value for s in JobStatus if s.finished)
_counters: dict[Path, StatusCounter] = {}
_counters_lock = threading.Lock()


def status_counter(store: JobStore) -> StatusCounter:
    with _counters_lock:
        counter = _counters.get(store.root)
        if counter is None or counter.store is not store:
            counter = _counters[store.root] = StatusCounter(store)
        return counter
