"""When a pulled stream drops: try again, with back-off, until a deadline; count what was missed.

The first complaint about every live-video system is a camera that drops and never comes back
(deepstream-services-library#353, jetson-utils#43). A pulled source (`AVS_LIVE_SOURCES`: udp, tcp, srt, rtmp,
rtsp, http) whose ffmpeg ends without the client asking (end of stream, the read timeout of a silent source,
a reset connection) is opened again: after 0.5 s, then twice as long each time up to 8 s, until
`give_up_s` have passed since the last frame. The new connection may bring another frame size or codec:
each is a new ffmpeg, so that costs nothing extra. The session's timeline goes on across the gap (the
missed time is counted, frames keep rising indices and times), and the summary reports each gap.

A session reconnects only once its source has given at least one frame: a URL that never worked fails at
once with its error, rather than after the whole window. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 8.0
MAX_GAPS_REPORTED = 100


@dataclass
class Gaps:
    """What the session missed: `reconnects` (new connections that gave frames again), `gaps` (the newest
    `MAX_GAPS_REPORTED`: after which frame, and the seconds between that frame and the next on the session's
    timeline), `lost` (True when the source did not come back within the window)."""

    reconnects: int = 0
    gaps: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    lost: bool = False

    def add(self, after_frame: int, seconds: float) -> None:
        self.reconnects += 1
        self.seconds += seconds
        self.gaps = [*self.gaps, {"after_frame": after_frame, "seconds": round(seconds, 3)}][-MAX_GAPS_REPORTED:]

    def summary(self) -> dict[str, object]:
        return {"reconnects": self.reconnects, "gap_s": round(self.seconds, 3), "gaps": list(self.gaps),
                "source_lost": self.lost}


def backoff_delays(first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S) -> Iterator[float]:
    """0.5, 1, 2, 4, 8, 8, ... seconds."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)
