"""REST streams: live sessions the server runs on a stream URL with no client connected, managed like jobs
(DeepStream's add-source / remove-source model, over HTTP).

    POST   /streams         the URL checked against AVS_LIVE_SOURCES, a record in AVS_DATA_DIR/streams/<id>/
                            (queued), then one `avs.stream(<id>)` message
    a worker                takes the stream's lease, reads the URL in a `LiveSession` on its frame engine and
                            appends one line per processed frame to masks.ndjson (`worker.live.streams`)
    GET    /streams/<id>/masks   follows masks.ndjson like a job's, then an end line
    DELETE /streams/<id>    stops it: a queued stream is cancelled at once, a running one by its worker within
                            a frame or half a second
    the reconciler          requeues a running stream whose worker stopped renewing its lease; the next worker
                            opens the URL again and numbers its frames after the last line written

The record is the job's (`JobRecord`, kind "stream", its source and mode in `stream`), in a folder of its own,
so the job routes, the job backlog and the job listing never see a stream, while the lease, fencing and
reconciler code is the same. States: `queued` -> `running` -> `succeeded` (the source ended: no data for
`AVS_LIVE_IDLE_TIMEOUT_S`, or `AVS_LIVE_MAX_DURATION_S` reached), `failed` (the source could not be read or
opened, with the error's code) or `cancelled` (DELETE). A stream's masks outlive its end (DELETE stops it but
deletes nothing); finished streams are removed `AVS_RESULT_TTL_S` after their end, as jobs are.

Torch-free: the API imports it.
"""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker.core.contracts import JobStatus
from worker.core.job_record import JobError, JobOptions, JobRecord, StreamSpec, new_job_id
from worker.core.jobstore import JobStore
from worker.core.leases import lease_live
from worker.core.live_protocol import StreamRequest

if TYPE_CHECKING:
    from worker.core.settings import ServiceSettings

STREAMS_FOLDER = "streams"
ENDED_BY_STOP = "stopped"
"""`ended_by` of a stream stopped by DELETE (the others: `source`, `max_duration`, `idle_timeout`)."""
SECRET_QUERY_KEYS = frozenset({"passphrase"})
"""URL options shown as `***` in the stream's public view (SRT's passphrase is the only secret one allowed)."""


def stream_store(settings: ServiceSettings) -> JobStore:
    """The records of the REST streams (in Redis, `worker.core.state.open_store`; their mask lines under
    `AVS_DATA_DIR/streams/<id>/`)."""
    from worker.core.state import open_store

    return open_store(settings, STREAMS_FOLDER)


def new_stream_record(request: StreamRequest, stream_id: str | None = None) -> JobRecord:
    """A queued stream for `request` (its URL already checked against the allow-list by the caller)."""
    return JobRecord(job_id=stream_id or new_job_id(), kind="stream",
                     options=JobOptions(fps=request.fps, threshold=request.threshold),
                     stream=StreamSpec(source=request.source, window=request.window, mode=request.mode))


def public_source(url: str) -> str:
    """The stream's URL as the API shows it: secret options (`SECRET_QUERY_KEYS`) replaced by `***`."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key in SECRET_QUERY_KEYS for key, _ in query):
        return url
    shown = [(key, "***" if key in SECRET_QUERY_KEYS else value) for key, value in query]
    return urlunsplit(parts._replace(query=urlencode(shown, safe="*")))


def ended_by(record: JobRecord) -> str | None:
    """Why a finished stream ended (`source`, `max_duration`, `stopped`, ...), None while it runs."""
    if not record.finished:
        return None
    reason = (record.live or {}).get("ended_by")
    return reason or (ENDED_BY_STOP if record.status is JobStatus.CANCELLED else None)


def frame_lines(path: Path) -> int:
    """Complete lines of a masks file (a torn last line, a write cut short, does not count); 0 without one.
    Read in blocks: an hour of frames is tens of megabytes."""
    count = 0
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                count += block.count(b"\n")
    except FileNotFoundError:
        return 0
    return count


class StopOutcome(StrEnum):
    """What `stop_stream` did."""

    CANCELLED = "cancelled"  # queued, or its worker is gone: cancelled now
    STOPPING = "stopping"  # running: its worker stops it (within a frame or the watcher's half second)
    FINISHED = "finished"  # it had already ended: nothing changed


def stop_stream(store: JobStore, stream_id: str, *, now: float | None = None) -> tuple[JobRecord, StopOutcome]:
    """DELETE /streams/<id> (idempotent): see `StopOutcome`. A stream whose worker's lease expired is cancelled
    here and its lease fenced off (the former worker, should it come back, writes nothing more). Its masks stay.
    Raises `JobNotFound` / `JobLocked` as `JobStore.update` does."""
    now = time.time() if now is None else now
    outcome: dict[str, StopOutcome] = {}

    def change(record: JobRecord) -> None:
        if record.finished:
            outcome["done"] = StopOutcome.FINISHED
            return
        record.cancel_requested = True
        if record.status is JobStatus.RUNNING and lease_live(record, now):
            outcome["done"] = StopOutcome.STOPPING
            return
        if record.status is JobStatus.RUNNING:  # orphaned: nobody will stop it but us
            record.progress.frames_done = frame_lines(store.masks_path(stream_id))
        record.finish(JobStatus.CANCELLED, now=now, by_owner=False)  # an orphan's former owner is fenced out
        record.live = {**(record.live or {}), "ended_by": ENDED_BY_STOP}
        outcome["done"] = StopOutcome.CANCELLED

    record = store.update(stream_id, change)
    return record, outcome["done"]


def finish_stream(record: JobRecord, status: JobStatus, *, frames: int, summary: dict[str, Any] | None,
                  reason: str | None, error: tuple[str, str] | None = None, now: float | None = None) -> None:
    """The worker's last write (under the fenced lock): the final `status`, `frames` lines in masks.ndjson, the
    last run's `summary` (counts, latency) with `ended_by` = `reason`, and the error (code, message) if any."""
    now = time.time() if now is None else now
    record.finish(status, now=now, error=JobError(code=error[0], message=error[1]) if error else None)
    record.progress.frames_done = frames
    record.progress.frames_total = frames
    record.live = {**(summary or {}), "ended_by": reason}
    record.timings = {"total": round(now - (record.started_at or record.created_at), 4)}
