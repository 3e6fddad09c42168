"""REST streams: start a server-side live session on an allow-listed stream URL, follow its masks, stop it
(`app.api.stream_service`, `worker.core.streams`)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.api import mask_stream, stream_service
from app.api.deps import SettingsDep, StreamSenderDep, StreamStoreDep
from app.api.schemas import ERROR_RESPONSES, ErrorBody, StreamCreated, StreamList, StreamView
from worker.core.live_protocol import StreamRequest

router = APIRouter(prefix="/streams", tags=["streams"], responses=ERROR_RESPONSES)

_CREATE_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "`unauthorized`: no or a wrong API key, or a source off the "
                                             "AVS_LIVE_SOURCES allow-list (the code /live uses)"},
    422: {"model": ErrorBody, "description": "`invalid_request`: a bad body, a scheme we do not read, credentials "
                                             "or options in the URL"},
    429: {"model": ErrorBody, "description": "`too_many_sessions`: every worker runs AVS_LIVE_MAX_SESSIONS live "
                                             "sessions and streams (with Retry-After)"},
    503: {"model": ErrorBody, "description": "`not_ready`: no warm worker, or the job queue did not take the "
                                             "stream (with Retry-After)"},
}


def _base(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.post("", status_code=201, response_model=StreamCreated, responses=_CREATE_ERRORS,
             summary="Start segmenting a stream URL on a worker, with no client connected")
async def create_stream(body: StreamRequest, request: Request, settings: SettingsDep, store: StreamStoreDep,
                        send: StreamSenderDep) -> JSONResponse:
    created = await stream_service.create_stream(body, settings, store, send, _base(request))
    return JSONResponse(created, status_code=201, headers={"Location": created["status_url"]})


@router.get("", response_model=StreamList, summary="Every stream kept: status, frames, times, the last error")
def list_streams(request: Request, store: StreamStoreDep) -> dict[str, Any]:
    return {"streams": stream_service.list_streams(store, _base(request))}


@router.get("/{stream_id}", response_model=StreamView, summary="One stream's status, frames, times, error")
def get_stream(stream_id: str, request: Request, store: StreamStoreDep) -> dict[str, Any]:
    return stream_service.stream_view(stream_service.get_stream(store, stream_id), _base(request))


@router.get("/{stream_id}/masks", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "one line per processed frame, as /jobs/{id}/masks: {frame_index, "
                                            "pts_s, size, counts}, then {end: true, status, frames, error, "
                                            "deleted, ended_by} once the stream has ended; a response without "
                                            "it was cut (resume with from_frame)"}},
            summary="The stream's masks as NDJSON; follows it while it runs")
async def get_stream_masks(stream_id: str, request: Request, store: StreamStoreDep,
                           from_frame: Annotated[int, Query(ge=0, description="skip frames before this index")] = 0,
                           ) -> StreamingResponse:
    await anyio.to_thread.run_sync(stream_service.get_stream, store, stream_id)  # 404 before streaming
    return StreamingResponse(mask_stream.follow_masks(request, store, stream_id, from_frame),
                             media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.delete("/{stream_id}", response_model=StreamView,
               responses={202: {"model": StreamView, "description": "running: its worker is stopping it"}},
               summary="Stop the stream (idempotent); its masks stay readable until they expire")
def delete_stream(stream_id: str, request: Request, store: StreamStoreDep) -> JSONResponse:
    record, status = stream_service.delete_stream(store, stream_id)
    return JSONResponse(stream_service.stream_view(record, _base(request)), status_code=status)
