"""Whether a browser plays an upload as it is, or needs the worker's preview (`worker.preview`).

The rule is the set every current browser decodes (the media formats MDN lists as supported by Chromium,
Firefox and Safari): MP4/MOV with H.264 (or AV1/VP9) video and AAC (or no) audio, and WebM (Matroska) with
VP8/VP9/AV1 video and Opus/Vorbis (or no) audio. Everything else (AVI, MPEG-TS/PS, FLV, Ogg, ASF, DV, MPEG-4
Part 2, HEVC, AC-3, MP3 in MP4, ...) gets a preview. A file whose clock restarts (two recordings in one file)
also gets one: a browser shows such a file's second part at the wrong times. Torch-free, no I/O.
"""

from __future__ import annotations

from worker.core.media.media_info import MediaInfo

_MP4_VIDEO = frozenset({"h264", "av1", "vp9"})
_MP4_AUDIO = frozenset({"aac"})
_WEBM_VIDEO = frozenset({"vp8", "vp9", "av1"})
_WEBM_AUDIO = frozenset({"opus", "vorbis"})


def browser_playable(info: MediaInfo) -> bool:
    """True when a browser's <video> plays `info`'s file as it is, in its shape and at the mask stream's times."""
    if info.timeline_restarts:
        return False
    audio = info.audio_codec if info.audio_stream_index is not None else None
    if info.demuxer == "mov":
        video_ok, audio_ok = info.video_codec in _MP4_VIDEO, audio is None or audio in _MP4_AUDIO
    elif info.demuxer == "matroska":
        video_ok, audio_ok = info.video_codec in _WEBM_VIDEO, audio is None or audio in _WEBM_AUDIO
    else:
        return False
    return video_ok and audio_ok
