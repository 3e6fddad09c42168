"""REST streams behind the thin routes (`worker.core.streams`): creating one (the allow-list, room on the
workers, the record, the message), the public view and the listing, stopping.

Room: a stream takes a live-session slot on a worker (`AVS_LIVE_MAX_SESSIONS`, shared with `/live`). The API
knows the slots from the workers' heartbeats (`live_capacity`, `live_sessions`, rewritten whenever a session
starts or ends) and adds the streams still queued, which no heartbeat counts yet; the check and the new
record happen under the streams' admission lock, so concurrent POSTs across API processes cannot all pass.
A worker's own count stays authoritative: one that is full when the message comes leaves the stream queued
for the reconciler to send again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import anyio

from app.api import prometheus
from app.api.broker import BrokerUnavailable, send_bounded
from app.api.counts import status_counter
from app.api.deps import TaskSender
from app.api.errors import ApiError, not_found
from app.api.health import warm_workers
from app.api.submission import refuse_unsent
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.job_record import JobRecord, is_job_id
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.live_protocol import StreamRequest
from worker.core.live_sources import SourceRefused, parse_allow_list, pulled_source
from worker.core.settings import ServiceSettings
from worker.core.streams import StopOutcome, ended_by, new_stream_record, public_source, stop_stream

log = logging.getLogger("avs.api.streams")


def stream_urls(stream_id: str, base: str = "") -> dict[str, str]:
    root = f"{base}/streams/{stream_id}"
    return {"status": root, "masks": f"{root}/masks"}


def stream_view(record: JobRecord, base: str = "") -> dict[str, Any]:
    """The public shape of a stream's record (`app.api.schemas.StreamView`)."""
    spec = record.stream
    return {
        "stream_id": record.job_id,
        "status": record.status.value,
        "source": public_source(spec.source) if spec is not None else "",
        "options": {"threshold": record.options.threshold, "fps": record.options.fps,
                    "window": spec.window if spec is not None else 2,
                    "mode": spec.mode if spec is not None else "drop_oldest"},
        "frames": record.progress.frames_done,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "ended_by": ended_by(record),
        "error": record.error.model_dump() if record.error is not None else None,
        "attempts": record.attempts,
        "takeovers": len(record.takeovers),
        "stop_requested": record.cancel_requested,
        "live": record.live,
        "urls": stream_urls(record.job_id, base),
    }


def get_stream(store: JobStore, stream_id: str) -> JobRecord:
    """The record, or 404 `not_found` (a malformed id, an unknown or expired stream)."""
    if not is_job_id(stream_id):
        raise not_found(f"no stream {stream_id[:64]!r}")
    try:
        return store.get(stream_id)
    except JobNotFound:
        raise not_found(f"no stream {stream_id!r} (unknown or expired)") from None


def list_streams(store: JobStore, base: str = "") -> list[dict[str, Any]]:
    """Every stream still kept, newest first."""
    records = sorted(store.records(), key=lambda r: r.created_at, reverse=True)
    return [stream_view(record, base) for record in records if record.kind == "stream"]


def _refused(code: str, message: str, *, retry_after_s: int | None = None) -> ApiError:
    prometheus.STREAMS_REFUSED.labels(code=code).inc()
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return ApiError(code, message, headers=headers)


def _admit(settings: ServiceSettings, store: JobStore, record: JobRecord) -> tuple[str, str] | None:
    """Write `record` if a worker has a free slot for it; else (code, message)."""
    with store.admission():
        workers, _ = warm_workers(settings)
        if not workers:
            return ServiceErrorCode.NOT_READY.value, "no warm worker to run the stream"
        capacity = sum(w["live_capacity"] for w in workers)
        running = sum(w["live_sessions"] for w in workers)
        queued = status_counter(store).counts().get(JobStatus.QUEUED.value, 0)
        if running + queued >= capacity:
            return (ServiceErrorCode.TOO_MANY_SESSIONS.value,
                    f"every worker runs its maximum of live sessions ({running} running, {queued} starting, "
                    f"{capacity} in all); try again later")
        store.create(record)
    return None


async def create_stream(body: StreamRequest, settings: ServiceSettings, store: JobStore, send: TaskSender,
                        base: str = "") -> dict[str, Any]:
    """POST /streams: 201's body, or `ApiError`: the URL refused (`invalid_request` 422, or `unauthorized` 401
    off the allow-list: /live's codes), `not_ready` 503 (no warm worker, the queue unreachable),
    `too_many_sessions` 429 (every slot taken), both with Retry-After."""
    try:
        pulled_source(body.source, parse_allow_list(settings.live_sources))
    except SourceRefused as exc:
        raise _refused(exc.code, str(exc)) from None
    record = new_stream_record(body)
    refusal = await anyio.to_thread.run_sync(_admit, settings, store, record)
    if refusal is not None:
        raise _refused(*refusal, retry_after_s=settings.retry_after_s)
    try:
        await send_bounded(send, record.job_id, settings.broker_timeout_s)
    except BrokerUnavailable as exc:
        message = f"the job queue is not reachable ({exc}); the stream was not started"
        if await anyio.to_thread.run_sync(refuse_unsent, store, record.job_id, ServiceErrorCode.NOT_READY, message):
            raise _refused(ServiceErrorCode.NOT_READY.value, message, retry_after_s=settings.retry_after_s) from None
    with contextlib.suppress(Exception):  # only a hint for the reconciler: a lost write means one resend at most
        await anyio.to_thread.run_sync(lambda: store.set_fields(record.job_id, message_sent_at=time.time()))
    prometheus.STREAMS_CREATED.inc()
    urls = stream_urls(record.job_id, base)
    log.info("stream %s created on %s", record.job_id, public_source(body.source))
    return {"stream_id": record.job_id, "status": JobStatus.QUEUED.value, "status_url": urls["status"],
            "masks_url": urls["masks"]}


def delete_stream(store: JobStore, stream_id: str) -> tuple[JobRecord, int]:
    """DELETE /streams/{id}: (record, 202 while its worker stops it, else 200). Idempotent; the masks stay."""
    get_stream(store, stream_id)
    try:
        record, outcome = stop_stream(store, stream_id)
    except JobNotFound:
        raise not_found(f"no stream {stream_id!r} (unknown or expired)") from None
    except JobLocked:
        raise ApiError(ServiceErrorCode.NOT_READY, f"stream {stream_id} is busy; retry the delete",
                       headers={"Retry-After": "1"}) from None
    return record, 202 if outcome is StopOutcome.STOPPING else 200
