"""The job record: its one shape (stored in Redis, `worker.core.state`), shared by the API, the workers and the tests.

A pydantic model, so a field is declared once with its type and its rule, a record read from disk is
validated, and a change that breaks a rule fails where it is made (`validate_assignment`). The public view
of a job (`GET /jobs/{id}`, `app.api.schemas.JobView`) is built from it; the worker reads its options and the
probe result stored here (`media`), so it does not probe the upload again.

Unknown fields in a file are ignored (a record written by a newer version still reads); fields added later
get defaults. Torch-free: the API imports it.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.core.contracts import JobStatus
from worker.core.media.media_info import MediaInfo, MediaLimits

JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
"""A job id: 32 lower-case hex digits (a UUID4 without dashes). Ids arrive in URLs: nothing else is ever
turned into a path."""

_JOB_ID = re.compile(JOB_ID_PATTERN)


def new_job_id() -> str:
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """True for a well-formed job id (see `JOB_ID_PATTERN`)."""
    return bool(_JOB_ID.match(text))


class JobOptions(BaseModel):
    """What the client asked for. The rules live here once; the API and the CLI report their messages."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    fps: float | None = Field(None, gt=0, le=MediaLimits.max_fps,
                              description="resample to this many frames/s first (None: every decoded frame)")
    threshold: float | None = Field(None, gt=0, lt=1, description="binary masks: sigmoid threshold")
    overlay: bool = Field(False, description="also render overlay.mp4")
    confidence: bool = Field(False, description="each mask line also carries `confidence`: the probability map at "
                                                "<= 64 px on the long side (base64 uint8)")


class UploadInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")

    filename: str | None = Field(None, description="the client's file name, sanitised")
    bytes: int = Field(0, ge=0)
    path: str = Field(description="the stored upload's name inside the job directory")


class Progress(BaseModel):
    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    frames_done: int = Field(0, ge=0)
    frames_total: int | None = Field(None, ge=0, description="an estimate until the job has finished")


class JobError(BaseModel):
    model_config = ConfigDict(extra="ignore")

    code: str = Field(description="stable error code (worker.core.contracts.ErrorCode / ServiceErrorCode)")
    message: str = ""


class StreamSpec(BaseModel):
    """A REST stream's source and session mode (`POST /streams`; its threshold and fps are `JobOptions`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    source: str = Field(max_length=2048, description="the stream URL, allow-listed when the stream was created")
    window: int = Field(2, ge=1, le=64, description="frames that may wait for the model")
    mode: Literal["drop_oldest", "no_drop"] = "drop_oldest"


class Takeover(BaseModel):
    """One change of owner: when, from whom, and why (see `worker.core.leases`)."""

    model_config = ConfigDict(extra="ignore")

    at: float
    previous_owner: str | None = None
    reason: str


class InvalidTransition(ValueError):
    """A status change the job lifecycle does not allow (out of a final status, or `finish` to a non-final
    one): a bug in the caller, never a client's fault."""


class JobRecord(BaseModel):
    """A job's record. Times are Unix seconds. `media` is the full probe result (its `path` is where the API saw
    the upload: use `media_info(job_dir)`).

    Ownership (`worker.core.leases`): a running job has an `owner` whose lease ends at `lease_expires_at`
    unless renewed; `lease_token` grows by one at every acquisition and every write of the job's results is
    checked against it (fencing), so a former owner can never write again. `message_sent_at`: when the
    broker accepted the job's last message (None: not sent yet)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    kind: Literal["file", "live", "stream"] = Field("file", description="an uploaded file, a recorded live "
                                                                    "session, or a REST stream (worker.core.streams)")
    status: JobStatus = JobStatus.QUEUED
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    options: JobOptions = Field(default_factory=JobOptions)
    upload: UploadInfo | None = None
    media: MediaInfo | None = None
    progress: Progress = Field(default_factory=Progress)
    timings: dict[str, float] = Field(default_factory=dict)
    error: JobError | None = None
    attempts: int = Field(0, ge=0, description="deliveries to a worker so far")
    cancel_requested: bool = False
    deleted: bool = Field(False, description="the client deleted the job: its files are (being) removed")
    owner: str | None = Field(None, description="the worker holding the lease of a running job")
    lease_token: int = Field(0, ge=0, description="fencing token: +1 at every acquisition")
    lease_expires_at: float | None = None
    takeovers: list[Takeover] = Field(default_factory=list)
    message_sent_at: float | None = None
    live: dict[str, Any] | None = Field(None, description="a recorded live session's end summary "
                                                          "(frames received / processed / dropped, latency); a "
                                                          "REST stream's, of its last run, with `ended_by`")
    stream: StreamSpec | None = Field(None, description="a REST stream's source and mode")
    api_key_id: str | None = Field(None, description="`worker.core.api_keys.key_id` of the key that created the "
                                                     "job (None: no key); GET /jobs lists a caller's own jobs")
    class_names: list[str] = Field(default_factory=list, description="the model's class names (index = class id) "
                                   "when it has more than one class; empty for a binary model")
    preview: str | None = Field(None, description="the browser-safe preview's file name in the job directory, "
                                                  "once written (`worker.preview`)")

    @field_validator("error", mode="before")
    @classmethod
    def _error_of_any_shape(cls, value: Any) -> Any:
        """A bare string (never written by this version) still reads as an internal error."""
        if isinstance(value, str):
            return {"code": "internal_error", "message": value}
        return value

    @property
    def finished(self) -> bool:
        return self.status.finished

    # ------------------------------------------------------------------------------------ transitions
    # The one place a record's status changes (issue #24): every writer (the API's submission and cancel, the
    # worker's runner, REST streams and live recordings, the leases' acquire and reconcile) calls these under
    # the record's lock, so the fields that go with a status (times, the lease, the fencing token) cannot
    # drift between callers. A finished record is final: a transition out of it is `InvalidTransition`.

    def take(self, owner: str, *, now: float, lease_timeout_s: float) -> None:
        """queued (or running with an expired lease) -> running under a new lease of `owner`: the fencing
        token grows by one, so every former owner's writes are refused from now on (`worker.core.leases`)."""
        self._leave(JobStatus.RUNNING)
        self.status, self.owner = JobStatus.RUNNING, owner
        self.lease_token += 1
        self.lease_expires_at = now + lease_timeout_s
        self.started_at = self.started_at or now
        self.attempts += 1
        self.updated_at = now

    def requeue(self, *, now: float) -> None:
        """running (its owner gone) -> queued, to be sent again: the former owner is fenced out (token + 1)."""
        self._leave(JobStatus.QUEUED)
        self._fence_out()
        self.status, self.message_sent_at, self.updated_at = JobStatus.QUEUED, None, now

    def finish(self, status: JobStatus, *, now: float | None = None, error: JobError | None = None,
               by_owner: bool = True) -> None:
        """-> `status` (succeeded, failed or cancelled), at `now` (Unix s), with `error` (a failure's code and
        message; None clears it). The lease ends. `by_owner`: the lease's holder ends its own job and stays
        its `owner` (the record says who finished it); anyone else (the API, the reconciler, a stop of an
        orphaned stream) fences the former owner out (token + 1) and clears `owner`.
        `InvalidTransition` when `status` is not final or the record is already finished."""
        if not status.finished:
            raise InvalidTransition(f"job {self.job_id}: finish() needs a final status, not {status.value}")
        self._leave(status)
        now = time.time() if now is None else now
        if not by_owner:
            self._fence_out()
        self.status, self.finished_at, self.updated_at = status, now, now
        self.lease_expires_at = None
        self.error = error

    def _leave(self, target: JobStatus) -> None:
        if self.status.finished:
            raise InvalidTransition(f"job {self.job_id}: {self.status.value} is final, not -> {target.value}")

    def _fence_out(self) -> None:
        if self.status is JobStatus.RUNNING:
            self.lease_token += 1  # a former owner that comes back finds its lease gone
        self.owner, self.lease_expires_at = None, None

    def media_info(self, job_dir: Path) -> MediaInfo | None:
        """The stored probe result, pointing at this job's upload in `job_dir` (None when not stored)."""
        if self.media is None or self.upload is None:
            return None
        return dataclasses.replace(self.media, path=str(job_dir / self.upload.path))

    def video_summary(self) -> dict[str, Any] | None:
        """The public description of the video (`MediaInfo.summary`), None when unknown."""
        return self.media.summary() if self.media is not None else None
