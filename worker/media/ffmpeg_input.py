"""How every ffmpeg call opens an upload: the same safety options, the same timeline.

Torch-free. Used by the frame reader, the audio reader and the overlay encoder.
"""

from __future__ import annotations

from pathlib import Path

from worker.core.media.containers import FORMAT_WHITELIST
from worker.core.media.media_info import MediaInfo


def media_input_args(info: MediaInfo) -> list[str]:
    """Input options shared by every ffmpeg call on an upload (they must precede `-i`).

    `-copyts` (a global option, harmless here) keeps the streams' own timestamps: each caller moves them to
    the decode timeline by subtracting `info.origin_s` (see `MediaInfo`)."""
    return [
        "-copyts",
        "-protocol_whitelist", "file,pipe",
        "-format_whitelist", FORMAT_WHITELIST,
        "-f", info.demuxer,
    ]  # fmt: skip


def timeline_filter(info: MediaInfo) -> str:
    """The audio filter that moves the stream's own timestamps to the decode timeline (0 = container start)."""
    return f"asetpts=PTS-{info.origin_s:.6f}/TB"


def input_url(info: MediaInfo) -> str:
    return f"file:{Path(info.path).resolve()}"
