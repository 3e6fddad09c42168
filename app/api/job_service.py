"""Job resources behind the thin routes: the public view of a record, lookup with 404s, deletion, the overlay
file, and the cleanup of expired jobs and abandoned uploads.

The record (`worker.core.job_record.JobRecord`, one per job in the state Redis, `worker.core.state`) is the
single source of truth the API and the workers share; every read-modify-write goes through `JobStore.update`,
which holds the record's lock, so a cancel never races a worker's progress update.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.api.errors import ApiError, not_found
from worker.core.contracts import DEFAULT_THRESHOLD, JobStatus, ServiceErrorCode
from worker.core.job_record import JobRecord, is_job_id
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.leases import lease_live
from worker.core.media.browser_safe import browser_playable

ORPHAN_UPLOAD_S = 3600.0  # a job directory without a record, untouched this long, is a dead upload


SOURCE_BY_KIND = {"file": "upload", "live": "live", "stream": "stream"}


def job_urls(job_id: str, *, overlay: bool, base: str = "") -> dict[str, str | None]:
    root = f"{base}/jobs/{job_id}"
    return {"status": root, "masks": f"{root}/masks", "overlay": f"{root}/overlay.mp4" if overlay else None}


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds -> ISO 8601 in UTC with a "Z" and milliseconds ("2026-12-04T21:46:53.120Z"); None stays."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def eta_seconds(record: JobRecord, now: float | None = None) -> float | None:
    """Seconds until a running job ends, from its rate so far (frames done / time since it started) and the
    frames left; None when it is not running or nothing is known yet (no frame done, no total)."""
    progress = record.progress
    if record.status is not JobStatus.RUNNING or record.started_at is None or not progress.frames_done \
            or not progress.frames_total:
        return None
    elapsed = max(0.0, (time.time() if now is None else now) - record.started_at)
    left = max(0, progress.frames_total - progress.frames_done)
    return round(elapsed / progress.frames_done * left, 3)


def media_view(record: JobRecord, base: str = "") -> dict[str, Any]:
    """`media`: whether a browser plays the upload as it is, and the preview's URL once the worker wrote one
    (`worker.preview`; a browser-playable upload is served there too while it is kept), and where in it the
    first mask line's frame is: 0 s in the worker's preview (made so), unknown (None) in the upload itself."""
    playable = record.media is not None and browser_playable(record.media)
    has_video = record.preview is not None or (playable and record.upload is not None and record.status
                                               is JobStatus.SUCCEEDED)
    return {"browser_playable": playable,
            "preview_url": f"{base}/jobs/{record.job_id}/preview.mp4" if has_video and not record.deleted else None,
            "preview_start_s": 0.0 if record.preview is not None and not record.deleted else None}


def job_view(record: JobRecord, base: str = "") -> dict[str, Any]:
    """The public shape of a record (GET /jobs/{id}, `app.api.schemas.JobView`); internal fields (the upload,
    paths) stay inside."""
    return {
        "job_id": record.job_id,
        "kind": record.kind,
        "source": SOURCE_BY_KIND[record.kind],
        "filename": record.upload.filename if record.upload is not None else None,
        "status": record.status.value,
        "progress": record.progress.model_dump(),
        "eta_s": eta_seconds(record),
        "video": record.video_summary(),
        "timings": record.timings,
        "error": record.error.model_dump() if record.error is not None else None,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "created_at_iso": iso_time(record.created_at),
        "started_at_iso": iso_time(record.started_at),
        "finished_at_iso": iso_time(record.finished_at),
        "options": record.options.model_dump(),
        "effective_threshold": record.options.threshold if record.options.threshold is not None
        else DEFAULT_THRESHOLD,
        "urls": job_urls(record.job_id, overlay=record.options.overlay, base=base),
        "media": media_view(record, base),
        "exports_url": f"{base}/jobs/{record.job_id}/exports",
        "attempts": record.attempts,
        "cancel_requested": record.cancel_requested,
        "deleted": record.deleted,
        "live": record.live,
    }


def list_jobs(store: JobStore, key_id: str | None, limit: int) -> list[JobRecord]:
    """GET /jobs: the records created with this key (every record when the service has no keys: `key_id` is
    None), newest first, at most `limit`; deleted ones are left out."""
    records = [r for r in store.records() if not r.deleted and (key_id is None or r.api_key_id == key_id)]
    records.sort(key=lambda r: r.created_at, reverse=True)
    return records[:limit]


def job_deleted(job_id: str) -> ApiError:
    return ApiError(ServiceErrorCode.JOB_DELETED, f"job {job_id} was deleted")


def get_record(store: JobStore, job_id: str) -> JobRecord:
    """The record, or 404 `not_found` (a malformed id, an unknown or expired job), or 410 `job_deleted` (the
    client deleted it; the tombstone lasts until the job would have expired)."""
    if not is_job_id(job_id):
        raise not_found(f"no job {job_id[:64]!r}")
    try:
        record = store.get(job_id)
    except JobNotFound:
        raise not_found(f"no job {job_id!r} (unknown or expired)") from None
    if record.deleted:
        raise job_deleted(job_id)
    return record


def delete_job(store: JobStore, job_id: str) -> tuple[JobRecord, int]:
    """DELETE /jobs/{id}. Returns (record, HTTP status).

    queued -> cancelled now (the worker skips it), files removed, 200; running -> `cancel_requested`,
    the worker stops within a batch, marks it cancelled and removes the files, 202; running but orphaned
    (its owner's lease expired: the worker is dead or stopped) -> cancelled now, the lease fenced off so the
    former owner cannot write, files removed, 200; finished -> files removed, the record stays as a
    tombstone, 200. Every case sets `deleted: true`. A second DELETE (like every other route of the job)
    answers 410 `job_deleted`.
    """
    get_record(store, job_id)  # 404 for unknown ids
    now = time.time()
    outcome: dict[str, str] = {}

    def change(record: JobRecord) -> None:
        status = record.status
        record.deleted = True
        if status is JobStatus.QUEUED or (status is JobStatus.RUNNING and not lease_live(record, now)):
            record.cancel_requested = True
            record.finish(JobStatus.CANCELLED, now=now, by_owner=False)  # an orphan's former owner is fenced out
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


def preview_file(store: JobStore, job_id: str) -> tuple[Path, str]:
    """(path, media type) of GET /jobs/{id}/preview.mp4: the worker's preview, or the upload itself when a
    browser plays it as it is (kept with the job). 404 `not_found` when there is none (yet)."""
    record = get_record(store, job_id)
    job_dir = store.job_dir(job_id)
    if record.preview is not None and (job_dir / record.preview).is_file():
        return job_dir / record.preview, "video/mp4"
    if record.media is not None and record.upload is not None and browser_playable(record.media) \
            and record.status is JobStatus.SUCCEEDED and (job_dir / record.upload.path).is_file():
        return job_dir / record.upload.path, "video/webm" if record.media.demuxer == "matroska" else "video/mp4"
    raise not_found(f"job {job_id} has no preview ({'not written yet' if not record.finished else 'none'})")
