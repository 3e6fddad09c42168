"""Job resources: the list, the record, the mask stream, the overlay, the preview, deletion. A deleted job
answers 410 `job_deleted` on every route (`job_service.get_record`)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.api import job_service, mask_stream
from app.api.deps import StoreDep
from app.api.schemas import JOB_ERROR_RESPONSES, JobList, JobView
from worker.core.api_keys import key_id, presented_key

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=JOB_ERROR_RESPONSES)


def _base(request: Request) -> str:
    return request.scope.get("root_path", "")


@router.get("", response_model=JobList, summary="The caller's jobs (its API key's; every job without keys), newest "
                                                "first, live recordings included")
def list_jobs(request: Request, store: StoreDep,
              limit: Annotated[int, Query(ge=1, le=1000, description="at most this many jobs")] = 50,
              ) -> dict[str, Any]:
    settings = request.app.state.settings
    owner = key_id(presented_key(request.headers)) if settings.api_keys else None
    base = _base(request)
    return {"jobs": [job_service.job_view(r, base) for r in job_service.list_jobs(store, owner, limit)]}


@router.get("/{job_id}", response_model=JobView, summary="Status, progress, video info, timings, error")
def get_job(job_id: str, request: Request, store: StoreDep) -> dict[str, Any]:
    return job_service.job_view(job_service.get_record(store, job_id), _base(request))


@router.get("/{job_id}/masks", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}},
                             "description": "one line per frame: {frame_index, pts_s, size:[h,w], counts}, then "
                                            "one end line {end: true, status, frames, error, deleted} once the "
                                            "job has finished; a stream without it was cut (resume with "
                                            "from_frame)"}},
            summary="Per-frame masks (COCO RLE) as NDJSON; follows a running job until it ends")
async def get_masks(job_id: str, request: Request, store: StoreDep,
                    from_frame: Annotated[int, Query(ge=0, description="skip frames before this index")] = 0,
                    ) -> StreamingResponse:
    await anyio.to_thread.run_sync(job_service.get_record, store, job_id)  # 404 for unknown ids, before streaming
    return StreamingResponse(mask_stream.follow_masks(request, store, job_id, from_frame),
                             media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/{job_id}/overlay.mp4", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}}, "description": "masks blended onto the video"}},
            summary="The overlay video, when it was asked for and the job succeeded")
def get_overlay(job_id: str, store: StoreDep) -> FileResponse:
    return FileResponse(job_service.overlay_file(store, job_id), media_type="video/mp4", filename=f"{job_id}.mp4")


@router.get("/{job_id}/preview.mp4", response_class=FileResponse,
            responses={200: {"content": {"video/mp4": {}, "video/webm": {}},
                             "description": "H.264 + AAC MP4 at the video's display size, one frame per mask line "
                                            "at the same pts_s (uploads a browser cannot play); a browser-playable "
                                            "upload is served as it is"}},
            summary="A video the browser plays, frame-exact with the mask stream")
def get_preview(job_id: str, store: StoreDep) -> FileResponse:
    path, media_type = job_service.preview_file(store, job_id)
    return FileResponse(path, media_type=media_type)


@router.delete("/{job_id}", response_model=JobView,
               responses={202: {"model": JobView, "description": "running: cancellation requested"}},
               summary="Cancel the job (queued: at once; running: within a batch) and delete its files")
def delete_job(job_id: str, request: Request, store: StoreDep) -> JSONResponse:
    record, status = job_service.delete_job(store, job_id)
    return JSONResponse(job_service.job_view(record, _base(request)), status_code=status)
