"""Response shapes, for the OpenAPI document (`/docs`).

Routes return plain dicts built from the job record (`app.api.job_service.job_view`); these models describe
them for clients and are kept in step by the tests, which check the exact key sets. The job's options,
progress and error are the record's own models (`worker.core.job_record`): one definition each.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.core.job_record import JobError, JobOptions, Progress


class ErrorDetail(BaseModel):
    code: str = Field(description="stable error code (worker.core.contracts.ErrorCode / ServiceErrorCode)")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class SubmitResponse(BaseModel):
    job_id: str
    status: str
    status_url: str
    masks_url: str
    overlay_url: str | None = Field(None, description="present only when overlay was asked for")


class AudioTrack(BaseModel):
    stream_index: int = Field(description="the container's stream index of the track that is heard")
    codec: str | None
    sample_rate: int | None
    channels: int | None
    language: str | None
    tracks: int = Field(description="audio tracks with sound in the file; the default-disposition one is used, "
                                    "else the first")


class VideoInfo(BaseModel):
    """The probed video (`MediaInfo.summary()`), stored with the job when it was submitted."""

    width: int = Field(description="stored width in pixels, upright (rotation applied); masks have this size")
    height: int
    fps: float = Field(description="average frame rate: frames / duration (variable rates included)")
    duration_s: float | None = Field(description="the video stream's own span, from its packets")
    frames: int | None = Field(description="frames in the video stream (packets); the decoder's count is final")
    start_time_s: float = Field(description="when the first frame is shown, from the container start")
    rotation: int = Field(description="clockwise degrees the source's metadata turns the stored frame")
    sample_aspect_ratio: list[int] = Field(description="[num, den]: pixel width over height")
    display_aspect_ratio: float
    container: str = Field(description="the demuxer (mov, matroska, mpegts, ...)")
    video_codec: str
    video_stream_index: int
    audio: AudioTrack | None = Field(description="the audio track that is heard")


class JobUrls(BaseModel):
    status: str
    masks: str
    overlay: str | None


class JobMedia(BaseModel):
    browser_playable: bool = Field(description="a browser plays the upload as it is (MP4 with H.264/AV1/VP9 + AAC, "
                                               "WebM with VP8/VP9/AV1 + Opus/Vorbis)")
    preview_url: str | None = Field(description="a video the page can play, frame-exact with the masks: the "
                                                "worker's H.264 + AAC preview, or the browser-playable upload; "
                                                "null until it exists")
    preview_start_s: float | None = Field(default=None, description=(
        "the media time (s) in preview_url of the first mask line's frame: 0 for the worker's preview (mask N's "
        "frame at pts_s N - pts_s 0 exactly); null when preview_url is the upload itself (its own timeline)"))


class JobView(BaseModel):
    job_id: str
    kind: str = Field(description="file: an uploaded video; live: a recorded live session")
    source: str = Field(description="upload / live / stream: where the video came from")
    filename: str | None = Field(None, description="the uploaded file's name as the client sent it, sanitised "
                                                   "(null for live recordings)")
    status: str = Field(description="queued / running / succeeded / failed / cancelled")
    progress: Progress
    eta_s: float | None = Field(description="seconds left, from the rate so far; null unless running with frames "
                                            "done")
    video: VideoInfo | None
    timings: dict[str, Any] = Field(description="seconds per stage, as the worker reports them")
    error: JobError | None
    created_at: float = Field(description="Unix time, seconds")
    started_at: float | None
    finished_at: float | None
    created_at_iso: str = Field(description="created_at as ISO 8601, UTC (\"Z\")")
    started_at_iso: str | None
    finished_at_iso: str | None
    options: JobOptions
    effective_threshold: float = Field(description="the sigmoid threshold used for binary masks: the request's, "
                                                   "else the model's default")
    urls: JobUrls
    media: JobMedia
    exports_url: str = Field(description="GET: the exports and their states (masks.zip, coco.json, ...)")
    attempts: int = Field(description="deliveries to a worker so far (2 after a worker died mid-job)")
    cancel_requested: bool
    deleted: bool = Field(description="the client deleted the job: its files are (being) removed")
    live: dict[str, Any] | None = Field(description="a recorded live session's end summary (frames received / "
                                                    "processed / dropped, latency percentiles)")


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="newest first: uploads and recorded live sessions")


class ExportEntry(BaseModel):
    name: str = Field(description="masks.zip, coco.json, overlay-outline.mp4, alpha.webm, side-by-side.mp4, "
                                  "waveform.json")
    media_type: str
    description: str
    status: str = Field(description="absent / pending (queued or being made) / ready / failed")
    url: str = Field(description="GET: the file when ready (202 while pending; starts it when absent); POST: start")
    size_bytes: int | None = Field(description="when ready")
    error: JobError | None = Field(description="why the last attempt failed (export_failed, export_too_large)")
    available: bool = Field(description="it can be made: the job succeeded (and, for the video ones and the "
                                        "waveform, keeps its video)")


class ExportList(BaseModel):
    exports: list[ExportEntry]


class ExportQueued(BaseModel):
    status: str = Field(description="pending, or ready")
    url: str


class StreamCreated(BaseModel):
    stream_id: str
    status: str = Field(description="queued: a worker opens the URL shortly")
    status_url: str
    masks_url: str = Field(description="NDJSON, the job mask lines' format; follows the stream until it ends")


class StreamOptions(BaseModel):
    threshold: float | None
    fps: float | None = Field(description="at most this many frames/s segmented (the others are skipped)")
    window: int
    mode: str = Field(description="drop_oldest or no_drop")


class StreamUrls(BaseModel):
    status: str
    masks: str


class StreamView(BaseModel):
    stream_id: str
    status: str = Field(description="queued / running / succeeded (the source ended) / failed / cancelled "
                                    "(DELETE)")
    source: str = Field(description="the stream URL (secret options shown as ***)")
    options: StreamOptions
    frames: int = Field(description="mask lines written so far (brought up to date every second while it runs)")
    created_at: float = Field(description="Unix time, seconds")
    started_at: float | None = Field(description="when a worker first opened the URL")
    finished_at: float | None
    ended_by: str | None = Field(description="source (no data for AVS_LIVE_IDLE_TIMEOUT_S), max_duration, "
                                             "stopped (DELETE); null while it runs or when it failed")
    error: JobError | None = Field(description="the last error (a failed stream's)")
    attempts: int = Field(description="workers that opened it (2 after its first worker died)")
    takeovers: int = Field(description="times it was taken over after its worker stopped renewing its lease")
    stop_requested: bool
    live: dict[str, Any] | None = Field(description="the last run's end summary: frames received / processed / "
                                                    "skipped by the fps cap / dropped late, latency percentiles")
    urls: StreamUrls


class StreamList(BaseModel):
    streams: list[StreamView] = Field(description="newest first, until they expire (AVS_RESULT_TTL_S)")


class WorkerInfo(BaseModel):
    name: str
    hostname: str | None
    pid: int | None
    variant: str | None
    device: str | None
    age_s: float
    live_url: str | None = Field(description="the worker's live endpoint (the API proxies /live to it)")
    live_sessions: int = Field(description="live sessions and REST streams running on it (as of its last "
                                           "heartbeat)")
    live_capacity: int = Field(description="its maximum of live sessions and REST streams together "
                                           "(AVS_LIVE_MAX_SESSIONS)")


class ReadyResponse(BaseModel):
    status: str
    broker: str
    workers: list[WorkerInfo]


class ModelInfo(BaseModel):
    """The model a worker serves, from its checkpoint's header (`worker.core.model_card.model_summary`)."""

    variant: str | None = Field(description="the architecture, e.g. avsegformer-pvt_v2_b5 or avesformer-tiny")
    checkpoint: str | None = Field(description="the checkpoint's file name (None: random weights)")
    input_size: int | None = Field(description="frames are resized to this square size (pixels)")
    num_classes: int | None = Field(description="1: binary masks (S4/MS3); 71: AVSS classes")
    class_names: list[str] = Field(description="names of the classes, index = class_id (empty for binary)")
    card: dict[str, Any] | None = Field(description="the model card: trained_on, metrics, source, licence, "
                                                    "intended_use (None: the checkpoint has none)")
    warning: str | None = Field(description="what a user must know before trusting the masks on real video")


class ModelResponse(BaseModel):
    model: ModelInfo
    workers: list[str] = Field(description="the warm workers serving it")
    other_models: list[ModelInfo] = Field(default_factory=list,
                                          description="other models served by other workers (a mixed fleet)")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "`unauthorized`"},
    404: {"model": ErrorBody, "description": "`not_found`"},
    422: {"model": ErrorBody, "description": "`invalid_request`"},
}

JOB_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    410: {"model": ErrorBody, "description": "`job_deleted`: the job was deleted (DELETE); every route of it "
                                             "answers this while its tombstone lasts"},
}
