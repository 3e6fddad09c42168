"""Exports of a finished job, made on demand by a worker (`avs.export`, `worker.exports`) and cached in the
job's folder (`worker.core.exports`: names, states, the size rule):

    GET  /jobs/{id}/exports          every export with its state (absent / pending / ready / failed)
    POST /jobs/{id}/exports/{name}   queue it (202 pending; 200 when ready already); idempotent
    GET  /jobs/{id}/exports/{name}   the file when ready; 202 + Retry-After while it is made (queued if absent)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse

from app.api import job_service
from app.api.deps import SettingsDep, StoreDep
from app.api.errors import ApiError, not_found
from app.api.schemas import JOB_ERROR_RESPONSES, ErrorBody, ExportList, ExportQueued
from worker.core.contracts import JobStatus, ServiceErrorCode
from worker.core.exports import EXPORTS, claim, estimate_bytes, export_path, export_state, pending_path
from worker.core.job_record import JobRecord
from worker.core.jobstore import JobStore
from worker.core.media.media_info import MediaInfo
from worker.core.settings import ServiceSettings

router = APIRouter(prefix="/jobs", tags=["exports"], responses=JOB_ERROR_RESPONSES)

RETRY_AFTER_S = 2
_NAMES = ", ".join(EXPORTS)
_EXPORT_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "`job_not_finished`: the job has not succeeded"},
    413: {"model": ErrorBody, "description": "`export_too_large`: over AVS_MAX_EXPORT_BYTES (estimated before, "
                                             "measured after)"},
    500: {"model": ErrorBody, "description": "`export_failed`: the worker could not make it (the message says why)"},
    503: {"model": ErrorBody, "description": "`not_ready`: the queue did not take the request"},
}


def _url(request: Request, job_id: str, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/jobs/{job_id}/exports/{name}"


def _has_video(record: JobRecord, store: JobStore) -> bool:
    info: MediaInfo | None = record.media_info(store.job_dir(record.job_id))
    return info is not None and Path(info.path).is_file()


def _entry(request: Request, store: JobStore, record: JobRecord, name: str) -> dict[str, Any]:
    job_dir = store.job_dir(record.job_id)
    state, error = export_state(job_dir, name)
    path = export_path(job_dir, name)
    return {"name": name, "media_type": EXPORTS[name].media_type, "description": EXPORTS[name].description,
            "status": state, "url": _url(request, record.job_id, name),
            "size_bytes": path.stat().st_size if state == "ready" else None, "error": error,
            "available": record.status is JobStatus.SUCCEEDED and (not EXPORTS[name].needs_video
                                                                   or _has_video(record, store))}


def _check_name(name: str) -> None:
    if name not in EXPORTS:
        raise not_found(f"no export {name[:64]!r}; there are {_NAMES}")


def _start(request: Request, store: JobStore, settings: ServiceSettings, record: JobRecord, name: str) -> str:
    """Queue export `name` unless it is ready or pending; its state afterwards. Raises the refusals."""
    if record.status is not JobStatus.SUCCEEDED:
        raise ApiError(ServiceErrorCode.JOB_NOT_FINISHED,
                       f"job {record.job_id} is {record.status.value}; exports are made from a succeeded job")
    if EXPORTS[name].needs_video and not _has_video(record, store):
        raise not_found(f"job {record.job_id} keeps no video, so {name} cannot be made")
    job_dir = store.job_dir(record.job_id)
    state, _ = export_state(job_dir, name)
    if state in ("ready", "pending"):
        return state
    masks = store.masks_path(record.job_id)
    estimate = estimate_bytes(record, name, masks.stat().st_size if masks.is_file() else 0)
    if estimate > settings.max_export_bytes:
        raise ApiError(ServiceErrorCode.EXPORT_TOO_LARGE,
                       f"{name} would be about {estimate} bytes, over AVS_MAX_EXPORT_BYTES={settings.max_export_bytes}")
    if claim(job_dir, name):
        try:
            request.app.state.export_sender(record.job_id, name)
        except Exception as exc:
            pending_path(job_dir, name).unlink(missing_ok=True)
            raise ApiError(ServiceErrorCode.NOT_READY, f"the job queue did not take the export ({type(exc).__name__})",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    return "pending"


@router.get("/{job_id}/exports", response_model=ExportList, summary="The job's exports and their states")
def list_exports(job_id: str, request: Request, store: StoreDep) -> dict[str, Any]:
    record = job_service.get_record(store, job_id)
    return {"exports": [_entry(request, store, record, name) for name in EXPORTS]}


@router.post("/{job_id}/exports/{name}", status_code=202, response_model=ExportQueued,
             responses={200: {"model": ExportQueued, "description": "ready already"}, **_EXPORT_ERRORS},
             summary=f"Make an export in a worker ({_NAMES}); idempotent")
def post_export(job_id: str, name: str, request: Request, store: StoreDep, settings: SettingsDep) -> JSONResponse:
    record = job_service.get_record(store, job_id)
    _check_name(name)
    state = _start(request, store, settings, record, name)
    return JSONResponse({"status": state, "url": _url(request, job_id, name)},
                        status_code=200 if state == "ready" else 202,
                        headers={} if state == "ready" else {"Retry-After": str(RETRY_AFTER_S)})


@router.get("/{job_id}/exports/{name}", response_class=FileResponse,
            responses={200: {"content": {kind.media_type: {} for kind in EXPORTS.values()},
                             "description": "the export"},
                       202: {"model": ExportQueued, "description": "being made: ask again after Retry-After"},
                       **_EXPORT_ERRORS},
            summary="Download an export (made first when absent)")
def get_export(job_id: str, name: str, request: Request, store: StoreDep, settings: SettingsDep):
    record = job_service.get_record(store, job_id)
    _check_name(name)
    job_dir = store.job_dir(job_id)
    state, error = export_state(job_dir, name)
    if state == "ready":
        return FileResponse(export_path(job_dir, name), media_type=EXPORTS[name].media_type,
                            filename=f"{job_id}-{name}")
    if state == "failed" and error is not None:
        raise ApiError(error.get("code", ServiceErrorCode.EXPORT_FAILED), error.get("message", "export failed"))
    state = _start(request, store, settings, record, name)
    if state == "ready":  # made between the two looks
        return FileResponse(export_path(job_dir, name), media_type=EXPORTS[name].media_type,
                            filename=f"{job_id}-{name}")
    return JSONResponse({"status": state, "url": _url(request, job_id, name)}, status_code=202,
                        headers={"Retry-After": str(RETRY_AFTER_S)})
