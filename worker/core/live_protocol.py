"""The live WebSocket protocol (`/live`), shared by the API's proxy, the worker's endpoint and the clients.

```
client                                   server
{"type": "start", ...LiveStart}   ─▶
                                  ◀─   {"type": "started", "session_id", "model", "input_size", ...}
binary media chunks (pushed)      ─▶
                                  ◀─   {"type": "mask", <the file API's mask record>, "latency_ms"}  (per frame)
{"type": "end"}                   ─▶
                                  ◀─   {"type": "end", "status", "frames_received", "frames_processed",
                                        "frames_skipped_by_rate", "frames_dropped", "dropped": {"late": n},
                                        "latency_p50_ms", ..., "job_id", "job_url" (recorded sessions), "error"}
                                  ◀─   {"type": "error", "code", "message"}  (refused before starting)
```

Text frames are JSON objects with a `type`; binary frames are media. In the end message frames_received =
frames_processed + frames_skipped_by_rate (over the client's `fps`) + frames_dropped (late; `dropped` gives
them by reason). Torch-free (the API imports it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.core.media.media_info import MediaLimits

START_TIMEOUT_S = 10.0
"""A connection that sends no start message within this is closed."""

CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_AGAIN = 1000, 1008, 1011, 1013
"""WebSocket close codes (RFC 6455 §7.4): done, refused (auth, bad start), server error, capacity."""


class SessionOptions(BaseModel):
    """What a session may ask for, over `/live` (`LiveStart`) or `POST /streams` (`StreamRequest`): one set
    of rules for both."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(None, gt=0, lt=1, description="binary masks: sigmoid threshold")
    fps: float | None = Field(None, gt=0, le=MediaLimits.max_fps,
                              description="process at most this many frames/s (the others are skipped: "
                                          "`frames_skipped_by_rate`)")
    window: int = Field(2, ge=1, le=64,
                        description="frames that may wait for the model; what one more does is `mode`'s")
    mode: Literal["drop_oldest", "no_drop"] = Field(
        "drop_oldest", description="drop_oldest: one frame more than `window` drops the oldest waiting one "
                                   "(`frames_dropped`; the latency stays bounded); no_drop: the input is not read "
                                   "until there is room (back-pressure on the sender; every frame gets a mask)")


class LiveStart(SessionOptions):
    """The first message of a session. Without `source` the client pushes the media (WebM/Matroska or
    fragmented MP4 bytes, as MediaRecorder writes them); with one the server reads that stream URL (only
    schemes and hosts allow-listed in `AVS_LIVE_SOURCES`)."""

    type: Literal["start"]
    source: str | None = Field(None, max_length=2048, description="a stream URL to pull (None: pushed media)")
    record: bool = Field(False, description="keep the session as a job when it ends (masks.ndjson)")
    overlay: bool = Field(False, description="a recorded session also gets overlay.mp4")

    @model_validator(mode="after")
    def _overlay_needs_record(self) -> LiveStart:
        if self.overlay and not self.record:
            raise ValueError("overlay needs record: true")
        return self


def message_error(code: str, message: str) -> dict[str, str]:
    return {"type": "error", "code": code, "message": message}


class StreamRequest(SessionOptions):
    """`POST /streams`: a session the server runs on a stream URL with no client connected (the same
    allow-list as a `/live` session's `source`); its masks are kept like a job's (`worker.core.streams`)."""

    source: str = Field(max_length=2048, description="the stream URL to read (allow-listed in AVS_LIVE_SOURCES)",
                        examples=["udp://127.0.0.1:5000"])
