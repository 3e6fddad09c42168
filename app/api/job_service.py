"""Job resources behind the thin routes: the public view of a record, lookup with 404s, deletion, the overlay
file, and the cleanup of expired jobs and abandoned uploads.

The record (`worker.core.job_record.JobRecord`, one `job.json` per job on the shared volume) is the single
source of truth the API and the workers share; every read-modify-write goes through `JobStore.update`,
which holds the record's lock, so a cancel never races a worker's progress update.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from app.api.errors import ApiError, not_found
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.job_record import JobRecord, is_job_id
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.leases import lease_live

ORPHAN_UPLOAD_S = 3600.0  # a job directory without a record, untouched this long, is a dead upload


def job_urls(job_id: str, *, overlay: bool, base: str = "") -> dict[str, str | None]:
    root = f"{base}/jobs/{job_id}"
    return {"status": root, "masks": f"{root}/masks", "overlay": f"{root}/overlay.mp4" if overlay else None}


def job_view(record: JobRecord, base: str = "") -> dict[str, Any]:
    """The public shape of a record (GET /jobs/{id}, `app.api.schemas.JobView`); internal fields (the upload,
    paths) stay inside."""
    return {
        "job_id": record.job_id,
        "kind": record.kind,
        "status": record.status.value,
        "progress": record.progress.model_dump(),
        "video": record.video_summary(),
        "timings": record.timings,
        "error": record.error.model_dump() if record.error is not None else None,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "options": record.options.model_dump(),
        "urls": job_urls(record.job_id, overlay=record.options.overlay, base=base),
        "attempts": record.attempts,
        "cancel_requested": record.cancel_requested,
        "deleted": record.deleted,
        "live": record.live,
    }


def get_record(store: JobStore, job_id: str) -> JobRecord:
    """The record, or 404 `not_found` (a malformed id, an unknown or expired job)."""
    if not is_job_id(job_id):
        raise not_found(f"no job {job_id[:64]!r}")
    try:
        return store.get(job_id)
    except JobNotFound:
        raise not_found(f"no job {job_id!r} (unknown or expired)") from None


def delete_job(store: JobStore, job_id: str) -> tuple[JobRecord, int]:
    """DELETE /jobs/{id}. Returns (record, HTTP status).

    queued -> cancelled now (the worker skips it), files removed, 200; running -> `cancel_requested`,
    the worker stops within a batch, marks it cancelled and removes the files, 202; running but orphaned
    (its owner's lease expired: the worker is dead or stopped) -> cancelled now, the lease fenced off so the
    former owner cannot write, files removed, 200; finished -> files removed, the record stays as a
    tombstone, 200. Every case sets `deleted: true`. Idempotent.
    """
    get_record(store, job_id)  # 404 for unknown ids
    now = time.time()
    outcome: dict[str, str] = {}

    def change(record: JobRecord) -> None:
        status = record.status
        record.deleted = True
        if status is JobStatus.QUEUED:
            record.status, record.cancel_requested, record.finished_at = JobStatus.CANCELLED, True, now
            outcome["action"] = "cancelled"
        elif status is JobStatus.RUNNING and not lease_live(record, now):
            record.status, record.cancel_requested, record.finished_at = JobStatus.CANCELLED, True, now
            record.lease_token += 1  # the former owner, should it come back, finds its lease gone
            record.owner, record.lease_expires_at = None, None
            outcome["action"] = "cancelled"
        elif status is JobStatus.RUNNING:
            record.cancel_requested = True
            outcome["action"] = "cancelling"
        else:
            outcome["action"] = "removed"

    try:
        record = store.update(job_id, change)
    except JobNotFound:
        raise not_found(f"no job {job_id!r} (unknown or expired)") from None
    except JobLocked:
        raise ApiError(ServiceErrorCode.NOT_READY, f"job {job_id} is busy; retry the delete",
                       headers={"Retry-After": "1"}) from None
    if outcome["action"] == "cancelling":
        return record, 202
    store.remove_files(job_id)
    return record, 200


def overlay_file(store: JobStore, job_id: str) -> Path:
    record = get_record(store, job_id)
    if not record.options.overlay:
        raise not_found("the overlay was not requested for this job (submit with overlay=true)")
    if record.deleted:
        raise not_found("the job was deleted; its overlay is gone")
    path = store.overlay_path(job_id)
    status = record.status
    if status is JobStatus.SUCCEEDED and path.is_file():
        return path
    if status.finished:
        raise not_found(f"the overlay is not available (job {status.value})")
    raise not_found(f"the overlay is not ready yet (job {status.value})")


def cleanup_once(store: JobStore, ttl_s: float, *, now: float | None = None) -> list[str]:
    """Expire finished jobs older than the TTL, and remove upload directories left without a record
    (the API process died mid-upload). Returns the expired job ids."""
    now = time.time() if now is None else now
    removed = store.expire(ttl_s, now=now)
    for entry in store.root.iterdir():
        if not entry.is_dir() or not is_job_id(entry.name) or store.has_record(entry.name):
            continue
        try:
            newest = max([entry.stat().st_mtime, *(p.stat().st_mtime for p in entry.iterdir())])
        except FileNotFoundError:
            continue
        if now - newest > ORPHAN_UPLOAD_S:
            shutil.rmtree(entry, ignore_errors=True)
    return removed
