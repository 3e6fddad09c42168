"""POST /segment: form options, the size and backlog checks, the streamed upload, the probe, the record, the
message. The route is thin (`app.api.routers.segment`); the streamed multipart parsing is `app.api.uploads`."""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from app.api import prometheus
from app.api.broker import PROBE_LIMITER, BrokerUnavailable, send_bounded
from app.api.counts import UPLOADING, status_counter
from app.api.deps import TaskSender
from app.api.errors import ApiError
from app.api.job_service import ORPHAN_UPLOAD_S, job_urls
from app.api.uploads import FORM_OVERHEAD_BYTES, invalid, receive_upload, storage_full, too_large
from worker.core.api_keys import key_id, presented_key
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.errors import MediaError
from worker.core.job_record import JobError, JobOptions, JobRecord, Progress, UploadInfo, new_job_id
from worker.core.jobstore import JobLocked, JobNotFound, JobStore
from worker.core.media.probe import probe_media
from worker.core.settings import ServiceSettings
from worker.core.state.errors import StateStorageFull

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
    for name in ("overlay", "confidence"):
        if fields.get(name):
            flag = fields[name].lower()
            if flag not in _TRUE | _FALSE:
                raise invalid(f"`{name}` must be true or false, got {fields[name][:32]!r}")
            values[name] = flag in _TRUE
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
def waiting_jobs(store: JobStore) -> int:
    """Jobs queued and not started, plus uploads admitted and not recorded yet (the backlog the limit caps)."""
    counts = status_counter(store).counts(uploads_max_age_s=ORPHAN_UPLOAD_S)
    return counts[JobStatus.QUEUED.value] + counts[UPLOADING]


def _reject(code: str) -> None:
    prometheus.JOBS_REJECTED.labels(str(code)).inc()


def _reserve(store: JobStore, settings: ServiceSettings, job_dir: Path) -> int | None:
    """Admission, atomic across API processes and hosts: one step on the state Redis counts the queued jobs
    plus the uploads already admitted and, when there is room, reserves a place for this job
    (`RedisJobStore.reserve_upload`); then the job's folder is made for its upload. Returns None when admitted,
    else the count that refused it."""
    refused = store.reserve_upload(job_dir.name, settings.max_backlog, ORPHAN_UPLOAD_S)
    if refused is not None:
        return refused
    try:
        job_dir.mkdir(parents=True)
    except BaseException:
        _release(store, job_dir.name)
        raise
    return None


def _abandon(store: JobStore, job_dir: Path) -> None:
    """An upload refused or abandoned before its record: its folder goes and its place is given back."""
    shutil.rmtree(job_dir, ignore_errors=True)
    _release(store, job_dir.name)


def _release(store: JobStore, job_id: str) -> None:
    """Give back an upload's place; a Redis that does not answer keeps it until it expires (`ORPHAN_UPLOAD_S`)."""
    try:
        store.release_upload(job_id)
    except JobLocked as exc:  # StateUnavailable
        log.warning("job %s: its upload reservation is left to expire (%s)", job_id, exc)


def _storage_full(exc: OSError) -> bool:
    """A full data volume, or a state Redis that cannot write its append-only file (a full disk under it)."""
    return isinstance(exc, StateStorageFull) or exc.errno in (errno.ENOSPC, errno.EDQUOT)


async def submit(request: Request, settings: ServiceSettings, store: JobStore, send_task: TaskSender) -> dict[str, Any]:
    """POST /segment: cap check, admission, streamed upload, probe, record, queue. Returns the 202 body.

    Nothing of a refused upload survives: the job directory is removed on every failure before the
    record exists (and the client's disconnect mid-upload counts as one). A full disk is 507 `storage_full`;
    a broker that does not take the message within `broker_timeout_s` is 503 `not_ready`.
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
    # 2. Admission, still before the body: the backlog counted and this job's place reserved together.
    job_id = new_job_id()
    job_dir = store.job_dir(job_id)
    try:
        refused = await anyio.to_thread.run_sync(_reserve, store, settings, job_dir)
    except OSError as exc:
        if _storage_full(exc):
            _reject(ServiceErrorCode.STORAGE_FULL)
            raise storage_full(settings.retry_after_s) from None
        raise
    if refused is not None:
        _reject(ServiceErrorCode.BACKLOG_FULL)
        raise ApiError(ServiceErrorCode.BACKLOG_FULL,
                       f"{refused} jobs are waiting (limit {settings.max_backlog}); retry later",
                       headers={"Retry-After": str(settings.retry_after_s)})
    try:
        try:
            record = await _receive_and_probe(request, settings, store, job_id, job_dir)
        except OSError as exc:
            if _storage_full(exc):
                raise storage_full(settings.retry_after_s) from None
            raise
    except ClientDisconnect:
        prometheus.UPLOADS_ABORTED.inc()
        await anyio.to_thread.run_sync(_abandon, store, job_dir)
        log.info("upload %s abandoned by the client", job_id)
        raise
    except ApiError as exc:
        _reject(exc.code)
        await anyio.to_thread.run_sync(_abandon, store, job_dir)
        raise
    except BaseException:
        await anyio.to_thread.run_sync(_abandon, store, job_dir)
        raise

    # 6. The message (ids only), within the broker deadline; the record says when it was sent.
    try:
        await send_bounded(send_task, job_id, settings.broker_timeout_s)
    except BrokerUnavailable as exc:
        log.error("could not queue job %s: %s", job_id, exc)
        full = _broker_storage_full(exc)
        code = ServiceErrorCode.STORAGE_FULL if full else ServiceErrorCode.NOT_READY
        message = ("no space left on the broker's volume; the job was not queued; retry later" if full
                   else f"the job queue is not reachable ({exc}); the job was not queued")
        refused = await anyio.to_thread.run_sync(refuse_unsent, store, job_id, code, message)
        if refused:
            _reject(code)
            raise ApiError(code, message, headers={"Retry-After": str(settings.retry_after_s)}) from None
        log.warning("job %s: the send timed out but a worker has the job: accepted", job_id)
    with contextlib.suppress(Exception):  # only a hint for the reconciler: a lost write means one resend at most
        await anyio.to_thread.run_sync(lambda: store.set_fields(job_id, message_sent_at=time.time()))
    prometheus.JOBS_SUBMITTED.inc()
    urls = job_urls(job_id, overlay=record.options.overlay, base=base)
    body = {"job_id": job_id, "status": JobStatus.QUEUED.value, "status_url": urls["status"],
            "masks_url": urls["masks"]}
    if record.options.overlay:
        body["overlay_url"] = urls["overlay"]
    return body


async def _receive_and_probe(request: Request, settings: ServiceSettings, store: JobStore, job_id: str,
                             job_dir: Path) -> JobRecord:
    # 3. The body, streamed to disk under the cap.
    upload = await receive_upload(request, job_dir, max_file_bytes=settings.max_upload_bytes,
                                  allowed_fields=FORM_FIELDS, check_field=check_field)
    if upload.path is None:
        raise invalid("the form has no `file` part")
    options = parse_options(upload.fields)
    prometheus.UPLOAD_BYTES.observe(upload.bytes)
    # 4. What is it? ffprobe under its own deadlines, on threads of its own.
    limits = settings.media_limits()
    try:
        info = await anyio.to_thread.run_sync(lambda: probe_media(upload.path, limits, require_audio=True),
                                              limiter=PROBE_LIMITER)
    except MediaError as exc:
        raise ApiError(exc.code, exc.message) from None
    # Gone while we probed: queue nothing that nobody will ever ask for.
    if await request.is_disconnected():
        raise ClientDisconnect()
    # 5. The record (queued, its message not sent yet).
    record = JobRecord(
        job_id=job_id, options=options, media=info,
        api_key_id=key_id(presented_key(request.headers)) if settings.api_keys else None,
        upload=UploadInfo(filename=upload.filename, bytes=upload.bytes, path=upload.path.name),
        progress=Progress(frames_total=info.expected_frames(options.fps)))
    await anyio.to_thread.run_sync(store.create, record)
    return record


def _broker_storage_full(exc: BaseException) -> bool:
    """True when the broker refused the message for lack of disk space (an ENOSPC of ours, or Redis's
    `MISCONF Errors writing to the AOF file: No space left on device`)."""
    seen: BaseException | None = exc
    while seen is not None:
        if (isinstance(seen, OSError) and _storage_full(seen)) or "No space left on device" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def refuse_unsent(store: JobStore, job_id: str, code: ServiceErrorCode, message: str) -> bool:
    """The client is told the job was not queued: make sure it never runs. Returns False when it is too late
    (the send only seemed to fail: a worker has already taken the job, so it was accepted after all).

    The record becomes a `failed` tombstone without its files; when even that small write fails (the disk is
    full, issue #27), the record and the whole job folder go, so no reconciler ever finds a queued record to
    send again for a client that never got its id. Jobs and REST streams (`app.api.stream_service`) alike.
    """
    try:
        with store.locked(job_id):
            record = store.get(job_id)
            if record.status is not JobStatus.QUEUED:
                return False
            record.finish(JobStatus.FAILED, error=JobError(code=code.value, message=message), by_owner=False)
            store.write(record)
        store.remove_files(job_id)
    except (OSError, JobLocked, JobNotFound, ValueError) as exc:
        log.warning("job %s: no tombstone (%s); its record and folder are removed", job_id, exc)
        try:
            store.remove_files(job_id, keep_record=False)
        except (OSError, JobLocked, ValueError) as again:
            # Redis refuses even the delete (a full disk under its append-only file): the folder goes, and the
            # reconciler fails the record it finds without its upload, never sends it (`worker.core.leases`).
            log.warning("job %s: record not removed either (%s)", job_id, again)
            shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
    return True
