"""Schemas of what the API streams rather than answers: the NDJSON mask lines (`GET /jobs/{id}/masks`,
`GET /streams/{id}/masks`) and the `/live` WebSocket's messages. They are documented, not used to validate:
the worker writes the lines (`worker.masks`) and the messages (`worker.live.server`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.api.schemas import JobError


class MaskSegment(BaseModel):
    class_id: int = Field(description="index into GET /model's class_names (0, background, is never listed)")
    class_name: str
    counts: str = Field(description="COCO RLE (compressed string, column-major) of this class's pixels")


class Confidence(BaseModel):
    size: list[int] = Field(description="[h, w] of the map: the mask's size scaled to at most 64 px on the long side")
    counts: None = Field(None, description="always null: this is not an RLE")
    data: str = Field(description="base64 of h × w uint8 values, row-major: the mean sounding probability × 255")


class MaskLine(BaseModel):
    """One frame's mask: a line of `masks.ndjson` / of the mask stream."""

    frame_index: int = Field(description="0-based index of the decoded (or resampled) frame")
    pts_s: float = Field(description="presentation time in seconds from the container start (the video's clock)")
    size: list[int] = Field(description="[h, w] at the video's display size")
    counts: str = Field(description="COCO RLE of the sounding pixels (pycocotools' compressed string)")
    segments: list[MaskSegment] | None = Field(None, description="multi-class models: one RLE per class present")
    confidence: Confidence | None = Field(None, description="only with confidence=true at submission")


class EndLine(BaseModel):
    """The last line of a complete mask stream; a stream without it was cut (resume with from_frame)."""

    end: Literal[True]
    status: str = Field(description="succeeded / failed / cancelled")
    frames: int = Field(description="frame lines the result holds (from frame 0): those sent with from_frame=0")
    error: JobError | None
    deleted: bool = Field(description="the job was deleted while the stream was followed")
    ended_by: str | None = Field(None, description="REST streams only: source, max_duration, stopped")


class LiveStarted(BaseModel):
    type: Literal["started"]
    session_id: str
    model: str | None
    input_size: int
    alignment: Literal["live"]
    pushed: bool
    window: int
    mode: str
    fps: float | None
    record: bool


class LiveMask(MaskLine):
    type: Literal["mask"]
    latency_ms: float = Field(description="from the frame's arrival to its mask")


class LiveEnd(BaseModel):
    type: Literal["end"]
    status: str = Field(description="succeeded / failed")
    session_id: str
    frames_received: int
    frames_processed: int
    frames_skipped_by_rate: int
    frames_dropped: int
    dropped: dict[str, int]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    reconnects: int = Field(0, description="a pulled stream: times it dropped and came back")
    gap_s: float = Field(0.0, description="a pulled stream: seconds without media between its connections")
    gaps: list[Any] = Field(default_factory=list, description="a pulled stream: each gap")
    source_lost: bool = Field(False, description="a pulled stream dropped and did not come back in time")
    ended_by: str | None = Field(description="client, source, source_lost, max_duration, idle; null on failure")
    job_id: str | None = Field(description="record=true: the job the session was kept as")
    job_url: str | None = Field(description="record=true: GET it (masks, preview, overlay, exports)")
    error: JobError | None


class LiveError(BaseModel):
    type: Literal["error"]
    code: str
    message: str


class LiveEndRequest(BaseModel):
    type: Literal["end"]


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """{name: JSON schema} for `models` and what they refer to, with refs into `#/components/schemas/`."""
    out: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out
