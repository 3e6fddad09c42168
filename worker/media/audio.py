"""The sound of a probed video as 16 kHz mono float32, on the frames' timeline (0 = the container start).

Audio uses only ffmpeg's exit status: concealed glitches last one codec frame (~20 ms) and the model pools
~1 s windows. No `-xerror`: it turned a packet the demuxer flags as corrupt (two MPEG-TS segments joined with
`cat`, which every player plays) into a failure (issue #21). The timestamps are made continuous first, as the
frames' are (`worker.media.ffmpeg_input.timeline_filter`): the sound of a recording that restarts inside the
stream follows the sound before it instead of being dropped as "in the past". Torch-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.probe import FFMPEG, ffmpeg_message
from worker.core.media.process import run_bounded
from worker.media.ffmpeg_input import input_url, media_input_args, timeline_filter


def read_audio(
    info: MediaInfo,
    *,
    sample_rate: int,
    timeout_s: float | None = None,
    limits: MediaLimits | None = None,
) -> np.ndarray:
    """The audio track as float32 mono in [-1, 1] at `sample_rate` (the model's: 16 kHz for VGGish), on the
    frames' timeline.

    Sample k is at k / sample_rate seconds from the container start, like the frame timestamps of
    `FrameReader`: `aresample=async=1:first_pts=0` pads an audio stream that starts late with leading
    silence (and fills gaps inside the stream), any channel layout is downmixed to mono (`rematrix_maxval=1`
    keeps the mix from clipping; the result is clipped to [-1, 1] anyway) and any input rate is resampled.
    The output ends where the audio ends, at most 1 s after the end of the video (so a hostile timestamp gap
    cannot make the silence padding grow without bound).
    """
    if not info.has_audio or info.audio_stream_index is None:
        raise MediaError(ErrorCode.NO_AUDIO_TRACK, f"{Path(info.path).name}: no audio track")
    if not (isinstance(sample_rate, int) and 1000 <= sample_rate <= 384000):
        raise ValueError(f"sample_rate must be an integer in [1000, 384000], got {sample_rate!r}")
    limits = limits if limits is not None else MediaLimits()
    if info.duration_s is not None:
        max_seconds = min(info.start_time_s + info.duration_s, 2 * limits.max_duration_s) + 1.0
    else:
        max_seconds = limits.max_duration_s + 1.0
    deadline = timeout_s if timeout_s is not None else limits.decode_timeout(info.duration_s)
    audio_filter = (
        f"{timeline_filter(info)},aresample=async=1:first_pts=0:rematrix_maxval=1.0,"
        f"aformat=sample_fmts=flt:sample_rates={sample_rate}:channel_layouts=mono,"
        f"atrim=end={max_seconds:.6f}"
    )
    command = [
        FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "error",
        *media_input_args(info),
        "-i", input_url(info),
        "-map", f"0:{info.audio_stream_index}",
        "-vn", "-sn", "-dn",
        "-af", audio_filter,
        "-t", f"{max_seconds:.6f}",  # the same end as atrim, but it also stops ffmpeg reading a longer track
        "-f", "f32le",
        "pipe:1",
    ]  # fmt: skip
    result = run_bounded(command, timeout_s=deadline)
    name = Path(info.path).name
    if result.timed_out:
        raise MediaError(ErrorCode.MEDIA_TIMEOUT, f"{name}: reading the audio did not finish within {deadline:g} s")
    if result.returncode != 0:
        reason = ffmpeg_message(result.stderr, info.path, "ffmpeg failed")
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{name}: damaged audio stream: {reason}")
    usable = len(result.stdout) - len(result.stdout) % 4
    samples = np.frombuffer(result.stdout[:usable], dtype="<f4").astype(np.float32)
    if samples.size == 0:  # packets that decode to nothing: as good as no track (never silence without a word)
        raise MediaError(ErrorCode.NO_AUDIO_TRACK, f"{name}: the audio track yields no sound")
    return np.clip(samples, -1.0, 1.0)
