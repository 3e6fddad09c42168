"""How every ffmpeg call opens an upload or a stream: the same safety options, the same timeline.

Torch-free. Used by the frame reader, the audio reader, the overlay encoder and the live sessions.

**One timeline, even when the stream's own restarts** (issue #21). Two MediaRecorder recordings sent back
to back on one socket, or saved in one file, carry timestamps that go back to 0 at the second recording's
header (w3c/mediacapture-record#195); a player shows them one after the other. `continuous_video_pts` and
`continuous_audio_pts` are the filters that do the same for us, in the video and in the audio chain: a
timestamp more than `RESTART_S` before the end of the previous frame starts a new part, moved to begin where
the previous part ended (after the last frame's duration: the previous frame interval for video, the
samples' duration for sound). Both parts keep their own pairing of pictures and sound, since each stream
continues at its own end, and the result is monotonic for every consumer (the `fps` filter, the raw
pipes, the muxers). Ordinary files are untouched: their timestamps never go back by more than B-frame
reordering, which the decoder has already undone. ffmpeg's expression evaluator keeps `st()`/`ld()`
variables across the frames of one filter, which is what carries the offset from frame to frame; the result
is rounded to the time base (setpts truncates, and 29 × 0.04 / 0.04 is 28.999...).
"""

from __future__ import annotations

from pathlib import Path

from worker.core.media.containers import FORMAT_WHITELIST
from worker.core.media.media_info import MediaInfo
from worker.core.media.packets import TIMELINE_RESTART_S


def media_input_args(info: MediaInfo) -> list[str]:
    """Input options shared by every ffmpeg call on an upload (they must precede `-i`).

    `-copyts` (a global option, harmless here) keeps the streams' own timestamps: each caller moves them to
    the decode timeline by subtracting `info.origin_s` (see `MediaInfo`)."""
    return [
        "-copyts",
        # A stream whose frame size changes mid-way (a camera rotated, a resolution adapted) keeps one filter
        # graph: `scale` adapts to each frame by itself, and the graph's counters (`setpts=N`, `fps`) go on
        # instead of restarting at 0 as a rebuilt graph's would (issue #21).
        "-reinit_filter", "0",
        "-protocol_whitelist", "file,pipe",
        "-format_whitelist", FORMAT_WHITELIST,
        "-f", info.demuxer,
    ]  # fmt: skip


RESTART_S = TIMELINE_RESTART_S
"""A timestamp this far before the previous frame's end is a restart of the stream's clock, not jitter (the
packet scan uses the same rule for the probe's duration)."""

# Variables of the expressions: 0 offset added to every timestamp (s); 2 where the next frame is expected to
# start (s); 3 the previous frame's time (s); 4 1 once a frame was seen; 5 this frame's time (s).
_CONTINUE = ("if(isnan(PTS),PTS,st(5,PTS*TB+ld(0));"
             "if(ld(4)*lt(ld(5),{previous}-{restart}),st(0,ld(2)-PTS*TB)+st(5,ld(2)));"
             "st(2,ld(5)+{duration});st(3,ld(5));st(4,1);round(ld(5)/TB))")


def continuous_video_pts() -> str:
    """The `setpts` filter that makes a video's timestamps continue across a restart (module docstring)."""
    expr = _CONTINUE.format(previous="ld(3)", restart=RESTART_S, duration="if(ld(4)*gt(ld(5),ld(3)),ld(5)-ld(3),0)")
    return f"setpts='{expr}'"


def continuous_audio_pts() -> str:
    """The `asetpts` filter that makes the sound's timestamps continue across a restart (module docstring)."""
    expr = _CONTINUE.format(previous="ld(2)", restart=RESTART_S, duration="NB_SAMPLES/SR")
    return f"asetpts='{expr}'"


def timeline_filter(info: MediaInfo) -> str:
    """The audio filters that make the stream's timestamps continuous, then move them to the decode timeline
    (0 = container start)."""
    return f"{continuous_audio_pts()},asetpts=PTS-{info.origin_s:.6f}/TB"


def input_url(info: MediaInfo) -> str:
    return f"file:{Path(info.path).resolve()}"
