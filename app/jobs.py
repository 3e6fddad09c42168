"""Job service functions behind the thin routes: submit, read, delete, follow the masks, find the overlay.

The job record (`worker.jobstore.JobStore`, one `job.json` per job on the shared data volume) is the
single source of truth that the API and the workers share; every read-modify-write goes through
`JobStore.update`, which holds the record's lock, so a cancel never races a worker's progress update.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request

from app import metrics
from app.counts import status_counter
from app.deps import TaskSender
from app.errors import ApiError, not_found
from app.uploads import FORM_OVERHEAD_BYTES, invalid, receive_upload, too_large
from worker.contracts import JobStatus, ServiceErrorCode
from worker.errors import MediaError
from worker.jobstore import RECORD, JobNotFound, JobStore, new_job_id
from worker.media.probe import MediaLimits, probe_media
from worker.settings import ServiceSettings

log = logging.getLogger("avs.api")

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_FPS = MediaLimits().max_fps  # the most frames per second a job may ask for
FORM_FIELDS = frozenset({"fps", "threshold", "overlay"})
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
ORPHAN_UPLOAD_S = 3600.0  # a job directory without a record, untouched this long, is a dead upload
MASKS_POLL_S = 0.2
MASKS_READ_BYTES = 1 << 20
MAX_LINE_BYTES = 256 << 20  # a frame's line is KBs; this only bounds a runaway file
_FRAME_INDEX = re.compile(rb'"frame_index"\s*:\s*(-?\d+)')


# ------------------------------------------------------------------------------------ form fields
def _float_field(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"`{name}` must be a number, got {text[:32]!r}") from None
    if not math.isfinite(value):
        raise invalid(f"`{name}` must be a finite number")
    return value


def parse_options(fields: dict[str, str]) -> dict[str, Any]:
    """`{fps, threshold, overlay}` from the form fields; an empty field counts as absent."""
    options: dict[str, Any] = {"fps": None, "threshold": None, "overlay": False}
    if fields.get("fps"):
        fps = _float_field("fps", fields["fps"])
        if not 0 < fps <= MAX_FPS:
            raise invalid(f"`fps` must be > 0 and at most {MAX_FPS:g}, got {fps:g}")
        options["fps"] = fps
    if fields.get("threshold"):
        threshold = _float_field("threshold", fields["threshold"])
        if not 0 < threshold < 1:
            raise invalid(f"`threshold` must be strictly between 0 and 1, got {threshold:g}")
        options["threshold"] = threshold
    if fields.get("overlay"):
        flag = fields["overlay"].lower()
        if flag not in _TRUE | _FALSE:
            raise invalid(f"`overlay` must be true or false, got {fields['overlay'][:32]!r}")
        options["overlay"] = flag in _TRUE
    return options


def check_field(name: str, text: str) -> None:
    """Validate one field as soon as it has arrived (before the rest of the upload)."""
    parse_options({name: text})


# --------------------------------------------------------------------------------------- views
def job_urls(job_id: str, *, overlay: bool, base: str = "") -> dict[str, str | None]:
    root = f"{base}/jobs/{job_id}"
    return {"status": root, "masks": f"{root}/masks", "overlay": f"{root}/overlay.mp4" if overlay else None}


def job_view(record: dict[str, Any], base: str = "") -> dict[str, Any]:
    """The public shape of a record (GET /jobs/{id}); internal fields (paths, the upload) stay inside."""
    options = record.get("options") or {}
    progress = record.get("progress") or {}
    error = record.get("error")
    if isinstance(error, dict):
        code = error.get("code") or ServiceErrorCode.INTERNAL_ERROR.value
        error = {"code": str(code), "message": str(error.get("message", ""))}
    elif error is not None:
        error = {"code": ServiceErrorCode.INTERNAL_ERROR.value, "message": str(error)}
    return {
        "job_id": record["job_id"],
        "status": record["status"],
        "progress": {"frames_done": progress.get("frames_done", 0), "frames_total": progress.get("frames_total")},
        "video": record.get("video"),
        "timings": record.get("timings") or {},
        "error": error,
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "options": {"fps": options.get("fps"), "threshold": options.get("threshold"),
                    "overlay": bool(options.get("overlay"))},
        "urls": job_urls(record["job_id"], overlay=bool(options.get("overlay")), base=base),
        "attempts": int(record.get("attempts") or 0),
        "cancel_requested": bool(record.get("cancel_requested")),
        "deleted": bool(record.get("deleted")),
    }


def checked_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise not_found(f"no job {job_id[:64]!r}")
    return job_id


def get_record(store: JobStore, job_id: str) -> dict[str, Any]:
    checked_job_id(job_id)
    try:
        return store.get(job_id)
    except JobNotFound:
        raise not_found(f"no job {job_id!r} (unknown or expired)") from None


# -------------------------------------------------------------------------------------- submit
def backlog(store: JobStore) -> int:
    return status_counter(store).counts()[JobStatus.QUEUED.value]


def _reject(code: str) -> None:
    metrics.JOBS_REJECTED.labels(str(code)).inc()


async def submit(request: Request, settings: ServiceSettings, store: JobStore, send_task: TaskSender) -> dict[str, Any]:
    """POST /segment: cap check, backlog check, streamed upload, probe, record, queue. Returns the 202 body.

    Nothing of a refused upload survives: the job directory is removed on every failure before the
    record exists (and the client's disconnect mid-upload counts as one).
    """
    base = request.scope.get("root_path", "")
    # 1. The declared size, before a single body byte is read.
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            _reject(ServiceErrorCode.INVALID_REQUEST)
            raise invalid("bad Content-Length") from None
        if length > settings.max_upload_bytes + FORM_OVERHEAD_BYTES:
            _reject(ServiceErrorCode.TOO_LARGE)
            raise too_large(settings.max_upload_bytes)
    # 2. The backlog (a scan of the job records, off the event loop), still before the body.
    queued = await anyio.to_thread.run_sync(backlog, store)
    if queued >= settings.max_backlog:
        _reject(ServiceErrorCode.BACKLOG_FULL)
        raise ApiError(ServiceErrorCode.BACKLOG_FULL,
                       f"{queued} jobs are waiting (limit {settings.max_backlog}); retry later",
                       headers={"Retry-After": str(settings.retry_after_s)})

    job_id = new_job_id()
    job_dir = store.job_dir(job_id)
    try:
        # 3. The body, streamed to disk under the cap.
        upload = await receive_upload(request, job_dir, max_file_bytes=settings.max_upload_bytes,
                                      allowed_fields=FORM_FIELDS, check_field=check_field)
        if upload.path is None:
            raise invalid("the form has no `file` part")
        options = parse_options(upload.fields)
        metrics.UPLOAD_BYTES.observe(upload.bytes)
        # 4. What is it? ffprobe under its own deadline, in a thread.
        limits = MediaLimits(max_duration_s=settings.max_duration_s, max_pixels=settings.max_pixels)
        try:
            info = await anyio.to_thread.run_sync(lambda: probe_media(upload.path, limits, require_audio=True))
        except MediaError as exc:
            raise ApiError(exc.code, exc.message) from None
        # Gone while we probed: queue nothing that nobody will ever ask for.
        if await request.is_disconnected():
            raise ClientDisconnect()
        # 5. The record, then the message (ids only).
        record = {
            "options": options,
            "video": info.summary(),
            "upload": {"filename": upload.filename, "bytes": upload.bytes, "path": upload.path.name},
            "progress": {"frames_done": 0, "frames_total": info.expected_frames(options["fps"])},
            "deleted": False,
        }
        await anyio.to_thread.run_sync(store.create, job_id, record)
    except ClientDisconnect:
        metrics.UPLOADS_ABORTED.inc()
        shutil.rmtree(job_dir, ignore_errors=True)
        log.info("upload %s abandoned by the client", job_id)
        raise
    except ApiError as exc:
        _reject(exc.code)
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise

    try:
        await anyio.to_thread.run_sync(send_task, job_id)
    except Exception as exc:
        log.error("could not queue job %s: %s", job_id, exc)
        message = "the job queue is not reachable; the job was not queued"
        await anyio.to_thread.run_sync(_fail_unsent, store, job_id, message)
        _reject(ServiceErrorCode.NOT_READY)
        raise ApiError(ServiceErrorCode.NOT_READY, message, headers={"Retry-After": str(settings.retry_after_s)}) \
            from None
    metrics.JOBS_SUBMITTED.inc()
    urls = job_urls(job_id, overlay=options["overlay"], base=base)
    body = {"job_id": job_id, "status": JobStatus.QUEUED.value, "status_url": urls["status"],
            "masks_url": urls["masks"]}
    if options["overlay"]:
        body["overlay_url"] = urls["overlay"]
    return body


def _fail_unsent(store: JobStore, job_id: str, message: str) -> None:
    now = time.time()
    store.update(job_id, lambda r: r.update(status=JobStatus.FAILED.value, finished_at=now,
                                            error={"code": ServiceErrorCode.NOT_READY.value, "message": message}))
    store.remove_files(job_id)


# -------------------------------------------------------------------------------------- delete
def delete_job(store: JobStore, job_id: str) -> tuple[dict[str, Any], int]:
    """DELETE /jobs/{id}. Returns (record, HTTP status).

    queued -> cancelled now (the worker skips it), files removed, 200; running -> `cancel_requested`,
    the worker stops within a batch, marks it cancelled and removes the files, 202; finished -> files
    removed, the record stays as a tombstone, 200. Every case sets `deleted: true`. Idempotent.
    """
    get_record(store, job_id)  # 404 for unknown ids
    now = time.time()
    outcome: dict[str, str] = {}

    def change(record: dict[str, Any]) -> None:
        status = JobStatus(record["status"])
        record["deleted"] = True
        if status is JobStatus.QUEUED:
            record.update(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now)
            outcome["action"] = "cancelled"
        elif status is JobStatus.RUNNING:
            record["cancel_requested"] = True
            outcome["action"] = "cancelling"
        else:
            outcome["action"] = "removed"

    try:
        record = store.update(job_id, change)
    except JobNotFound:
        raise not_found(f"no job {job_id!r} (unknown or expired)") from None
    if outcome["action"] == "cancelling":
        return record, 202
    store.remove_files(job_id)
    return record, 200


# --------------------------------------------------------------------------------------- masks
def _poll_masks(store: JobStore, job_id: str, offset: int) -> tuple[dict[str, Any] | None, bytes, int]:
    """(record, the COMPLETE lines from `offset`, file size).

    The record is read BEFORE the file, so a record that says "finished" guarantees that the read after
    it saw every line the worker wrote. Only whole lines are returned, so `offset` always sits just after
    a newline: a torn last line is read again at the next poll (and a worker that truncates it after a
    crash and writes it anew is followed exactly).
    """
    try:
        record = store.get(job_id)
    except (JobNotFound, ValueError):
        return None, b"", 0
    try:
        with open(store.masks_path(job_id), "rb") as fh:
            size = fh.seek(0, 2)
            if size <= offset:
                return record, b"", size
            fh.seek(offset)
            data = fh.read(MASKS_READ_BYTES)
            cut = data.rfind(b"\n")
            while cut < 0 and len(data) < min(size - offset, MAX_LINE_BYTES):  # one line longer than a read
                more = fh.read(MASKS_READ_BYTES)
                if not more:
                    break
                found = more.rfind(b"\n")
                cut = len(data) + found if found >= 0 else -1
                data += more
            return record, data[:cut + 1], size
    except FileNotFoundError:
        return record, b"", 0


def _frame_index(line: bytes) -> int | None:
    match = _FRAME_INDEX.search(line, 0, 96)
    return int(match.group(1)) if match else None


def end_line(record: dict[str, Any]) -> bytes:
    """The last line of every complete mask stream: `{"end": true, "status", "frames", "error", "deleted"}`.

    `frames` is how many frame lines the job's result holds (frame_index 0 .. frames-1): all of them when
    `status` is "succeeded", those written before the failure when "failed" (kept, readable), those written
    before the cancel when "cancelled". `deleted`: the client deleted the job, its frame lines are gone. A
    stream that ends without this line was cut (the connection, the server): resume with `from_frame`.
    Frame readers recognise frame lines by `frame_index` and skip this one.
    """
    view = job_view(record)
    end = {"end": True, "status": view["status"], "frames": view["progress"]["frames_done"],
           "error": view["error"], "deleted": view["deleted"]}
    return json.dumps(end, separators=(",", ":")).encode() + b"\n"


async def follow_masks(request: Request, store: JobStore, job_id: str, from_frame: int,
                       poll_s: float = MASKS_POLL_S) -> AsyncIterator[bytes]:
    """The complete lines of `masks.ndjson` with frame_index >= from_frame, following a live job, then the
    end line (`end_line`) once the job has finished.

    Polls the record and the file every `poll_s` while the job is queued or running; ends when the job
    is finished and the file is exhausted (with the end line), or without the end line when the record
    disappears or the client goes away. A partial last line is held back until its newline arrives (and
    never sent if it never does). Frames are sent at most once, in increasing order: if the worker rewrites
    the file (a redelivered job), already-sent frames are skipped.
    """
    offset = 0
    last_sent = -1
    while True:
        record, data, size = await anyio.to_thread.run_sync(_poll_masks, store, job_id, offset)
        if record is None:
            return
        if size < offset:  # the file was rewritten shorter (or removed): read it again, skip what was sent
            offset = 0
            continue
        if data:
            offset += len(data)
            out = []
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                index = _frame_index(line)
                if index is not None:
                    if index < from_frame or index <= last_sent:
                        continue
                    last_sent = index
                out.append(line)
            if out:
                yield b"\n".join(out) + b"\n"
            continue
        if JobStatus(record["status"]).finished:
            yield end_line(record)
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


# ------------------------------------------------------------------------------------- overlay
def overlay_file(store: JobStore, job_id: str) -> Path:
    record = get_record(store, job_id)
    if not (record.get("options") or {}).get("overlay"):
        raise not_found("the overlay was not requested for this job (submit with overlay=true)")
    if record.get("deleted"):
        raise not_found("the job was deleted; its overlay is gone")
    path = store.overlay_path(job_id)
    status = JobStatus(record["status"])
    if status is JobStatus.SUCCEEDED and path.is_file():
        return path
    if status.finished:
        raise not_found(f"the overlay is not available (job {status.value})")
    raise not_found(f"the overlay is not ready yet (job {status.value})")


# ------------------------------------------------------------------------------------- cleanup
def cleanup_once(store: JobStore, ttl_s: float, *, now: float | None = None) -> list[str]:
    """Expire finished jobs older than the TTL, and remove upload directories left without a record
    (the API process died mid-upload). Returns the expired job ids."""
    now = time.time() if now is None else now
    removed = store.expire(ttl_s, now=now)
    for entry in store.root.iterdir():
        if not entry.is_dir() or (entry / RECORD).exists():
            continue
        try:
            newest = max([entry.stat().st_mtime, *(p.stat().st_mtime for p in entry.iterdir())])
        except FileNotFoundError:
            continue
        if now - newest > ORPHAN_UPLOAD_S:
            shutil.rmtree(entry, ignore_errors=True)
    return removed
