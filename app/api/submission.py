"""POST /segment: form options, the size and backlog checks, the streamed upload, the probe, the record, the
message. The route is thin (`app.api.routers.segment`); the streamed multipart parsing is `app.api.uploads`."""

from __future__ import annotations

import logging
import math
import shutil
import time
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from app.api import prometheus
from app.api.counts import status_counter
from app.api.deps import TaskSender
from app.api.errors import ApiError
from app.api.job_service import job_urls
from app.api.uploads import FORM_OVERHEAD_BYTES, invalid, receive_upload, too_large
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.job_record import JobError, JobOptions, JobRecord, Progress, UploadInfo, new_job_id
from worker.core.jobstore import JobStore
from worker.core.media.probe import probe_media
from worker.core.settings import ServiceSettings

log = logging.getLogger("avs.api")

FORM_FIELDS = frozenset(JobOptions.model_fields)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# ------------------------------------------------------------------------------------ form fields
def _float_field(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise invalid(f"`{name}` must be a number, got {text[:32]!r}") from None
    if not math.isfinite(value):
        raise invalid(f"`{name}` must be a finite number")
    return value


def parse_options(fields: dict[str, str]) -> JobOptions:
    """`JobOptions` from the form fields (text); an empty field counts as absent. The ranges are
    `JobOptions`' own; a value outside one is `invalid_request` naming the field and its rule."""
    values: dict[str, Any] = {}
    for name in ("fps", "threshold"):
        if fields.get(name):
            values[name] = _float_field(name, fields[name])
    if fields.get("overlay"):
        flag = fields["overlay"].lower()
        if flag not in _TRUE | _FALSE:
            raise invalid(f"`overlay` must be true or false, got {fields['overlay'][:32]!r}")
        values["overlay"] = flag in _TRUE
    try:
        return JobOptions(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0])
        raise invalid(f"`{name}` {error['msg'].lower()}, got {values.get(name)!r}") from None


def check_field(name: str, text: str) -> None:
    """Validate one field as soon as it has arrived (before the rest of the upload)."""
    parse_options({name: text})


# -------------------------------------------------------------------------------------- submit
def backlog(store: JobStore) -> int:
    return status_counter(store).counts()[JobStatus.QUEUED.value]


def _reject(code: str) -> None:
    prometheus.JOBS_REJECTED.labels(str(code)).inc()


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
        prometheus.UPLOAD_BYTES.observe(upload.bytes)
        # 4. What is it? ffprobe under its own deadline, in a thread.
        limits = settings.media_limits()
        try:
            info = await anyio.to_thread.run_sync(lambda: probe_media(upload.path, limits, require_audio=True))
        except MediaError as exc:
            raise ApiError(exc.code, exc.message) from None
        # Gone while we probed: queue nothing that nobody will ever ask for.
        if await request.is_disconnected():
            raise ClientDisconnect()
        # 5. The record, then the message (ids only).
        record = JobRecord(
            job_id=job_id, options=options, media=info,
            upload=UploadInfo(filename=upload.filename, bytes=upload.bytes, path=upload.path.name),
            progress=Progress(frames_total=info.expected_frames(options.fps)))
        await anyio.to_thread.run_sync(store.create, record)
    except ClientDisconnect:
        prometheus.UPLOADS_ABORTED.inc()
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
    prometheus.JOBS_SUBMITTED.inc()
    urls = job_urls(job_id, overlay=options.overlay, base=base)
    body = {"job_id": job_id, "status": JobStatus.QUEUED.value, "status_url": urls["status"],
            "masks_url": urls["masks"]}
    if options.overlay:
        body["overlay_url"] = urls["overlay"]
    return body


def _fail_unsent(store: JobStore, job_id: str, message: str) -> None:
    store.set_fields(job_id, status=JobStatus.FAILED, finished_at=time.time(),
                     error=JobError(code=ServiceErrorCode.NOT_READY.value, message=message))
    store.remove_files(job_id)
