"""What ffmpeg's `showinfo` filter says about each frame: its time and its size. One parser for every reader
(uploads, live sessions, the overlay).

Raw video on a pipe is bare pixels. The readers put a `showinfo` filter in the chain, *before* the frames
are scaled to the model's size, so its line for each frame gives the frame's presentation time and the size
the frame was decoded at; the line is logged before the frame reaches the pipe, so a reader has it by the
time it has read the frame's bytes. The size is what makes a stream whose resolution changes mid-way work
(issue #21): each frame's mask is drawn at that frame's own size.

Times are `pts × time_base` (exact; `pts_time` has six significant digits only), the time base coming from
showinfo's `config in time_base` line. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FRAME = re.compile(r"Parsed_showinfo.*\]\s+(?:\[\w+\]\s+)?n:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)\s+pts_time:(\S+)"
                    r"(?:.*?\bs:(\d+)x(\d+))?")
_CONFIG = re.compile(r"Parsed_showinfo.*config in time_base:\s*(\d+)/(\d+)")
ERROR_LINE = re.compile(r"^(?:\[[^\]]* @ 0x[0-9a-f]+\]\s*)*\[(?:panic|fatal|error)\]\s*(.*)$")
"""A line ffmpeg logged at error level or worse (`-loglevel level+...` tags each line with its severity)."""
DECODE_ERROR = re.compile(r"Error while decoding stream|\bno frame!")
"""What a decoder says, at error level, about a packet it cannot decode (VP8/VP9: ffmpeg's "Error while
decoding stream"; H.264: "no frame!"): before the first frame, one frame skipped."""


@dataclass(frozen=True)
class FrameLine:
    """One frame as showinfo saw it: `pts` (in the time base, None when the frame has none), `pts_time`
    (ffmpeg's rounded seconds), `width`/`height` (the decoded frame's stored size; 0 when not logged)."""

    pts: int | None
    pts_time: float | None
    width: int
    height: int


def parse_frame_line(line: str) -> FrameLine | None:
    """The frame described by a showinfo line; None for any other line."""
    match = _FRAME.search(line)
    if match is None:
        return None
    pts_text, time_text = match.group(2), match.group(3)
    try:
        pts_time = float(time_text)
    except ValueError:
        pts_time = None
    return FrameLine(pts=None if pts_text == "NOPTS" else int(pts_text), pts_time=pts_time,
                     width=int(match.group(4) or 0), height=int(match.group(5) or 0))


def parse_time_base(line: str) -> float | None:
    """Seconds per pts tick from showinfo's configuration line; None for any other line."""
    match = _CONFIG.search(line)
    if match is None:
        return None
    num, den = int(match.group(1)), int(match.group(2))
    return num / den if den > 0 else 0.0


def frame_seconds(frame: FrameLine, time_base: float) -> float | None:
    """The frame's time in seconds: exact from pts and the time base when both are known."""
    if frame.pts is not None and time_base > 0:
        return frame.pts * time_base
    return frame.pts_time


def display_size(width: int, height: int, rotation: int) -> tuple[int, int]:
    """(height, width) of a frame stored at width × height once turned by `rotation` degrees clockwise."""
    return (width, height) if rotation % 180 == 90 else (height, width)
