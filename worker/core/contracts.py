"""Contracts shared by the worker, the CLI and the HTTP API.

This module is imported by the torch-free API process, so it depends on the standard library (and
pydantic where a model is needed) only.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a video was refused or failed.

    These strings are stable API: the CLI prints them (`avs: error [code]: message`) and the HTTP API
    returns them as `{"error": {"code": ..., "message": ...}}`. Clients branch on them, so a value is
    never renamed or reused for a different meaning; new reasons get new members.
    """

    NOT_MEDIA = "not_media"
    """Not a readable media file, or a container outside the demuxer allow-list (playlists, lists)."""
    NO_VIDEO_STREAM = "no_video_stream"
    """The container holds no video stream (cover art does not count)."""
    NO_AUDIO_TRACK = "no_audio_track"
    """The container holds no audio stream and the caller needs sound."""
    CORRUPT_MEDIA = "corrupt_media"
    """A container we accept, but damaged: it does not open, or it fails while decoding."""
    TOO_LONG = "too_long"
    """The video is longer (or holds more frames) than the configured limits."""
    TOO_MANY_PIXELS = "too_many_pixels"
    """The frame size (width × height) is larger than the configured limit."""
    MEDIA_TIMEOUT = "media_timeout"
    """ffprobe/ffmpeg did not finish within its deadline and was killed."""
    NOT_FRAGMENTED = "not_fragmented"
    """A live stream in MP4 whose media comes before its index (`mdat` before `moov`): it cannot be read as it
    arrives; send fragmented MP4, or upload the file."""


class ServiceErrorCode(StrEnum):
    """Error codes of the HTTP API beyond the media ones (same stability rule as `ErrorCode`)."""

    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    BACKLOG_FULL = "backlog_full"
    NOT_READY = "not_ready"
    UNAUTHORIZED = "unauthorized"
    INVALID_REQUEST = "invalid_request"
    INTERNAL_ERROR = "internal_error"
    STORAGE_FULL = "storage_full"
    """No space left on the data volume (HTTP 507; a job that hits it fails with this code)."""
    TOO_MANY_SESSIONS = "too_many_sessions"
    """Every worker already runs its maximum of live sessions (`AVS_LIVE_MAX_SESSIONS`); try again later."""
    IDLE_TIMEOUT = "idle_timeout"
    """A live session received no media for `AVS_LIVE_IDLE_TIMEOUT_S`."""
    CLIENT_GONE = "client_gone"
    """A live session's client disconnected before ending it."""
    WORKER_LOST = "worker_lost"
    """The worker running a live session stopped mid-session (its connection dropped); start a new session."""
    JOB_DELETED = "job_deleted"
    """The job was deleted (DELETE /jobs/{id}): every route of it answers 410 while its tombstone lasts."""
    JOB_NOT_FINISHED = "job_not_finished"
    """An export was asked for before the job succeeded (HTTP 409)."""
    EXPORT_TOO_LARGE = "export_too_large"
    """The export would be (or came out) larger than `AVS_MAX_EXPORT_BYTES` (HTTP 413)."""
    EXPORT_FAILED = "export_failed"
    """The worker could not make the export; the message says why (HTTP 500)."""
    STATE_LOST = "state_lost"
    """The state store lost data it held (Redis evicted keys or restarted without persistence): HTTP 500."""


DEFAULT_THRESHOLD = 0.5
"""The sigmoid threshold of binary masks when the request names none (`model.predictor.DEFAULT_THRESHOLD` is
this value; kept here so the torch-free API can report a job's effective threshold)."""


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


TASK_SEGMENT = "avs.segment"
"""The Celery task name. Its only argument is the job id: the message carries ids, never video bytes."""

TASK_EXPORT = "avs.export"
"""The Celery task that makes one export of a finished job (`worker.exports`); arguments: job id, export name."""

TASK_STREAM = "avs.stream"
"""The Celery task that starts a REST stream (`POST /streams`) on a worker; its only argument is the stream id."""
