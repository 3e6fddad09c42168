"""POST /segment: the streamed upload (`app.api.uploads`) and the job submission (`app.api.submission.submit`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from app.api.deps import SettingsDep, StoreDep, TaskSenderDep
from app.api.errors import ApiError
from app.api.schemas import ErrorBody, SubmitResponse
from app.api.submission import submit
from worker.core.contracts import ServiceErrorCode
from worker.core.media.containers import ACCEPTED_DESCRIPTION
from worker.core.media.media_info import MediaLimits

router = APIRouter(tags=["jobs"])

_FORM_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": f"the video ({ACCEPTED_DESCRIPTION}) with an audio track"},
                "fps": {"type": "number", "exclusiveMinimum": 0, "maximum": MediaLimits.max_fps,
                        "description": "resample to this frame rate first (default: every frame); "
                                       "the first frame is always kept, so any rate gives at least one"},
                "threshold": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                              "description": "binary masks: sigmoid threshold (default: the model's)"},
                "overlay": {"type": "boolean", "default": False,
                            "description": "also render overlay.mp4 (masks blended onto the video)"},
                "confidence": {"type": "boolean", "default": False,
                               "description": "each mask line also carries `confidence`: the sounding probability "
                                              "map, <= 64 px on the long side, base64 uint8 row-major"},
            },
        }}},
    },
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "`unauthorized`"},
    413: {"model": ErrorBody, "description": "`too_large`: over the upload cap (checked while streaming)"},
    415: {"model": ErrorBody, "description": "`not_media`: not a container we accept"},
    422: {"model": ErrorBody, "description": "`invalid_request`, or unusable media: `no_video_stream`, "
                                             "`no_audio_track`, `corrupt_media`, `too_long`, `too_many_pixels`, "
                                             "`media_timeout`"},
    429: {"model": ErrorBody, "description": "`backlog_full` (with Retry-After)"},
    503: {"model": ErrorBody, "description": "`not_ready`: the job queue did not take the job within the broker "
                                             "deadline (with Retry-After)"},
    507: {"model": ErrorBody, "description": "`storage_full`: no space left on the data volume"},
}


@router.post("/segment", status_code=202, response_model=SubmitResponse, response_model_exclude_none=True,
             responses=_ERRORS, openapi_extra=_FORM_SCHEMA,
             summary="Upload a video; segment its sounding objects in the background")
async def segment(request: Request, settings: SettingsDep, store: StoreDep, send_task: TaskSenderDep) -> JSONResponse:
    try:
        body = await submit(request, settings, store, send_task)
    except ClientDisconnect:
        # Nobody is listening any more; the answer only feeds the request metrics and the access log.
        raise ApiError(ServiceErrorCode.INVALID_REQUEST, "the client disconnected before the upload ended") from None
    return JSONResponse(body, status_code=202, headers={"Location": body["status_url"]})
