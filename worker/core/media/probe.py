"""Probe an uploaded file with ffprobe, refuse what we will not process, describe the rest.

Every upload is hostile input to a large C codebase. The rules, each measured on ffmpeg 5.1:

* **Demuxer allow-list, enforced inside ffprobe** (`worker.core.media.containers`): `-format_whitelist` with the
  demuxers of mainstream video containers that never open another file or URL, plus sound-only
  containers (answered `no_video_stream`). A playlist, list or manifest is refused before anything it
  names is opened (tests prove it with a FIFO as the target).
* **not_media vs corrupt_media.** A file ffprobe cannot open is `corrupt_media` when its first bytes carry
  the signature of a video container we accept (`containers.sniff_container`): the right kind of file,
  damaged (typically an interrupted upload). Anything else ffprobe cannot open, and anything it opens with
  a demuxer outside the allow-list, is `not_media`.
* **Which streams.** Cover art (`attached_pic`) and timed thumbnails are pictures, not video. Among the
  real video streams, and among the audio streams that hold at least one packet, the one marked
  `default` is used (what every player plays), else the first. A probe that lists no video stream, an
  audio-only container and a video stream without a single packet are `no_video_stream`; no audio stream
  with packets is `no_audio_track`.
* **Duration and frame count from the packets, not the headers** (`worker.core.media.packets`): one demux-only
  pass over the file gives the video stream's own span (first frame's start to last frame's end) and its
  packet count. Headers are absent in files written to a pipe (MediaRecorder), count a start offset as
  duration in Matroska, and guess a frame rate for VFR files; the packets are what the decoder will see.
  So a limit is decided before any frame is decoded, in every container: span over `max_duration_s`, more
  than `max_duration_s × max_fps` frames, or a start offset over `max_duration_s` -> `too_long`.
* **Deadline.** ffprobe runs under a SIGKILL deadline (`probe_timeout_s`, and `scan_timeout_s` for the
  packet pass): `media_timeout`.

This module is torch-free (the API process probes uploads) and imports nothing from `app`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from worker.core.contracts import ErrorCode
from worker.core.errors import MediaError
from worker.core.media.containers import (
    ACCEPTED_DESCRIPTION,
    FORMAT_WHITELIST,
    demuxer_for,
    is_audio_only,
    sniff_container,
)
from worker.core.media.media_info import MediaInfo, MediaLimits
from worker.core.media.packets import scan_packets
from worker.core.media.process import run_bounded

FFPROBE = "ffprobe"
FFMPEG = "ffmpeg"
DEFAULT_LIMITS = MediaLimits()  # frozen, so one shared default instance is safe

# ------------------------------------------------------------------------------- parsing helpers
def _float(value: Any) -> float | None:
    """ffprobe numbers arrive as strings, sometimes "N/A"; None for anything that is not a finite number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    if number is None or number != int(number):
        return None
    return int(number)


def _rate(value: Any) -> float | None:
    """"30000/1001" -> 29.97; None for "0/0", missing or nonsense."""
    if not isinstance(value, str):
        return None
    num, _, den = value.partition("/")
    numerator, denominator = _float(num), _float(den or "1")
    if numerator is None or denominator is None or numerator <= 0 or denominator <= 0:
        return None
    return numerator / denominator


_HMS = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")


def _hms(value: Any) -> float | None:
    """Matroska's per-track `DURATION` tag, "00:00:02.000000000", in seconds."""
    if not isinstance(value, str):
        return None
    match = _HMS.match(value)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _tag(stream: dict[str, Any], name: str) -> Any:
    tags = stream.get("tags")
    if not isinstance(tags, dict):
        return None
    for key, value in tags.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


_LOG_CONTEXT = re.compile(r"\[([\w,-]+) @ 0x[0-9a-f]+\]\s*")
_LEVEL_TAG = re.compile(r"\[(?:panic|fatal|error|warning|info|verbose|debug|trace)\]\s*")


def ffmpeg_message(stderr: str, path: str | Path, fallback: str) -> str:
    """The last (up to two) lines ffmpeg printed, fit for a user: the server-side path is replaced by the
    file's name, severity tags are dropped and log contexts like "[h264 @ 0x55d0...]" become "h264: ".
    Nothing of ffmpeg's own plumbing or of the server reaches the user (issue #21): progress lines
    ("frame= ... fps= ...", "size=N/A time=... bitrate=..."), `showinfo`'s per-frame lines and the generic
    lines about filter graphs and conversions are skipped; pipes become "the stream" and any other absolute
    path "a file"."""
    resolved, name = str(Path(path).resolve()), Path(path).name
    lines = [line.strip() for line in stderr.splitlines()
             if line.strip() and not _PROGRESS_LINE.search(line) and not _PLUMBING_LINE.search(line)]
    if not lines:
        return fallback
    # The last line is often generic ("Invalid data found when processing input"); the one before it
    # usually says what was wrong ("moov atom not found").
    picked = list(dict.fromkeys(lines[-2:]))
    text = "; ".join(picked).replace(f"file:{resolved}", name).replace(resolved, name)
    text = _PIPE.sub("the stream", _ABSOLUTE_PATH.sub("a file", text))
    text = _LEVEL_TAG.sub("", text)
    return _LOG_CONTEXT.sub(lambda m: "" if m.group(1) == "NULL" else f"{m.group(1)}: ", text)[:500]


_PIPE = re.compile(r"\bpipe:\d*")
_ABSOLUTE_PATH = re.compile(r"(?:file:)?(?<![\w.])/(?:[^\s/:;'\"]+/)*[^\s/:;'\"]+")
_PLUMBING_LINE = re.compile(r"Parsed_\w+|filtergraph|[Ff]ilter(?:s| graph| network)?\b.*(?:reinit|config|inject)|"
                            r"Error reinitializing filters|Failed to inject frame|Error while filtering|"
                            r"Error marking filters|Error sending frames to consumers|Conversion failed!|"
                            r"Terminating thread with return code|Nothing was written into output file|"
                            r"does not contain any stream|Output file #\d+")


_PROGRESS_LINE = re.compile(r"^\s*(?:\[\w+\]\s*)?(frame|size)=\s*\S+.*\btime=|\bParsed_showinfo_|\bshowinfo\b")


def _refused_format(stderr: str) -> str | None:
    """The demuxer ffmpeg detected before `-format_whitelist` refused it ("hls", "concat", ...)."""
    match = re.search(r"\[([\w,-]+) @ 0x[0-9a-f]+\][^\n]*not on whitelist", stderr)
    return match.group(1) if match else None


def _rotation_cw(stream: dict[str, Any]) -> int:
    """Clockwise display rotation, normalised to 0/90/180/270.

    The Display Matrix side data (what ffmpeg 5.1 itself honours) wins; its `rotation` is counter-clockwise,
    so it is negated. The legacy `rotate` tag (clockwise) is the fallback for files without a matrix; the
    decoder applies the rotation itself from this value, so both sources give upright frames.
    """
    degrees_cw: float | None = None
    side_data = stream.get("side_data_list")
    if isinstance(side_data, list):
        for entry in side_data:
            if isinstance(entry, dict) and entry.get("side_data_type") == "Display Matrix":
                ccw = _float(entry.get("rotation"))
                if ccw is not None:
                    degrees_cw = -ccw
                    break
    if degrees_cw is None:
        degrees_cw = _float(_tag(stream, "rotate"))
    if degrees_cw is None:
        return 0
    return round(degrees_cw / 90.0) % 4 * 90


def _is_picture(stream: dict[str, Any]) -> bool:
    disposition = stream.get("disposition")
    if not isinstance(disposition, dict):
        return False
    return bool(disposition.get("attached_pic")) or bool(disposition.get("timed_thumbnails"))


# ------------------------------------------------------------------------------------------ probe
def ffprobe_command(path: str | Path) -> list[str]:
    """The exact ffprobe call: file protocol only, allowed demuxers only, JSON out.

    The input is given as `file:<absolute path>` so that no file name is ever read as an option or as
    another protocol (`concat:`, `pipe:`, ...).
    """
    return [
        FFPROBE, "-hide_banner", "-v", "error",
        "-protocol_whitelist", "file",
        "-format_whitelist", FORMAT_WHITELIST,
        "-print_format", "json", "-show_format", "-show_streams",
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip


def probe_media(
    path: str | Path,
    limits: MediaLimits = DEFAULT_LIMITS,
    *,
    require_audio: bool = True,
) -> MediaInfo:
    """Probe `path` and return its `MediaInfo`, or raise `MediaError` with the reason it is refused.

    Refusals, in the order they are checked: not a regular file (missing, a directory, a FIFO) or empty ->
    `not_media`; probe deadline -> `media_timeout`; demuxer not allowed, or not openable and without the
    signature of an accepted container -> `not_media`; an accepted container that does not open ->
    `corrupt_media`; no video stream -> `no_video_stream`; no audio stream when `require_audio` ->
    `no_audio_track`; width × height over the limit -> `too_many_pixels`; video duration (or its start
    offset, or its frame count over `max_duration_s × max_fps`) over the limit -> `too_long`.
    """
    path = Path(path)
    if not path.is_file():
        # Also refuses FIFOs and devices, which would block ffprobe until its deadline.
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: the file is empty")

    result = run_bounded(ffprobe_command(path), timeout_s=limits.probe_timeout_s)
    if result.timed_out:
        raise MediaError(
            ErrorCode.MEDIA_TIMEOUT, f"{path.name}: probing did not finish within {limits.probe_timeout_s:g} s"
        )
    if "not on whitelist" in result.stderr:
        detected = _refused_format(result.stderr) or "unknown"
        raise MediaError(
            ErrorCode.NOT_MEDIA,
            f"{path.name}: format {detected!r} is not accepted (accepted: {ACCEPTED_DESCRIPTION})",
        )
    data: dict[str, Any] = {}
    if result.returncode == 0:
        try:
            parsed = json.loads(result.stdout.decode("utf-8", errors="replace") or "{}")
            data = parsed if isinstance(parsed, dict) else {}
        except json.JSONDecodeError:
            data = {}
    fmt = data.get("format") if isinstance(data.get("format"), dict) else None
    format_name = fmt.get("format_name") if fmt else None
    if result.returncode != 0 or not isinstance(format_name, str):
        reason = ffmpeg_message(result.stderr, path, "ffprobe could not read the file")
        if sniff_container(path) is not None:
            raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: damaged media file: {reason}")
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: not a media file: {reason}")
    demuxer = demuxer_for(format_name)
    if demuxer is None:  # defence in depth: -format_whitelist already refused it
        raise MediaError(ErrorCode.NOT_MEDIA, f"{path.name}: container {format_name!r} not accepted")
    assert fmt is not None
    streams = [s for s in data.get("streams") or [] if isinstance(s, dict)]
    return _media_info(path, fmt, format_name, demuxer, streams, limits, require_audio)


def _pick(streams: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The stream a player would use: the first one marked default, else the first one."""
    for stream in streams:
        disposition = stream.get("disposition")
        if isinstance(disposition, dict) and disposition.get("default"):
            return stream
    return streams[0] if streams else None


def _sample_aspect(stream: dict[str, Any], rotation: int) -> tuple[int, int]:
    """ffprobe's "64:45" as (64, 45), turned with the picture for 90/270; (1, 1) when unknown or 0:1."""
    num, _, den = str(stream.get("sample_aspect_ratio") or "").partition(":")
    sar = (_int(num) or 0, _int(den) or 0)
    if sar[0] <= 0 or sar[1] <= 0:
        return (1, 1)
    divisor = math.gcd(*sar)
    sar = (sar[0] // divisor, sar[1] // divisor)
    return (sar[1], sar[0]) if rotation in (90, 270) else sar


def _header_duration(video: dict[str, Any], fmt: dict[str, Any], start_time_s: float) -> float | None:
    """The headers' idea of the video's duration: only used when no packet carries a timestamp."""
    duration_s = _float(video.get("duration"))
    if duration_s is None:
        duration_s = _hms(_tag(video, "DURATION"))
    if duration_s is None:
        container_duration = _float(fmt.get("duration"))
        if container_duration is not None:
            duration_s = container_duration - start_time_s
    return duration_s if duration_s is not None and duration_s > 0 else None


def _media_info(
    path: Path,
    fmt: dict[str, Any],
    format_name: str,
    demuxer: str,
    streams: list[dict[str, Any]],
    limits: MediaLimits,
    require_audio: bool,
) -> MediaInfo:
    videos = [s for s in streams if s.get("codec_type") == "video" and not _is_picture(s)]
    if is_audio_only(demuxer) or not videos:
        pictures = " (only cover art)" if any(s.get("codec_type") == "video" for s in streams) else ""
        raise MediaError(ErrorCode.NO_VIDEO_STREAM, f"{path.name}: no video stream{pictures}")
    video = _pick(videos)
    assert video is not None
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    if not audios and require_audio:
        raise MediaError(ErrorCode.NO_AUDIO_TRACK, f"{path.name}: no audio track (the model needs sound)")

    coded_width, coded_height = _int(video.get("width")) or 0, _int(video.get("height")) or 0
    if coded_width <= 0 or coded_height <= 0:
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: the video stream has no frame size")
    video_codec = video.get("codec_name")
    if not isinstance(video_codec, str) or not video_codec:
        raise MediaError(ErrorCode.CORRUPT_MEDIA, f"{path.name}: unknown video codec")
    rotation = _rotation_cw(video)
    width, height = (coded_height, coded_width) if rotation in (90, 270) else (coded_width, coded_height)
    if width * height > limits.max_pixels:
        raise MediaError(
            ErrorCode.TOO_MANY_PIXELS,
            f"{path.name}: {width}x{height} = {width * height} pixels per frame, the limit is {limits.max_pixels}",
        )

    # What the streams really hold: one demux-only pass (worker.core.media.packets).
    video_index = _int(video.get("index")) or 0
    scan = scan_packets(path, demuxer=demuxer, format_whitelist=FORMAT_WHITELIST, watch=video_index,
                        max_packets=limits.max_frames, timeout_s=limits.scan_timeout_s)
    if scan.timed_out:
        raise MediaError(ErrorCode.MEDIA_TIMEOUT,
                         f"{path.name}: reading the packets did not finish within {limits.scan_timeout_s:g} s")
    if scan.stopped_early:
        raise MediaError(ErrorCode.TOO_LONG, f"{path.name}: more than {limits.max_frames} frames, the limit is "
                                             f"{limits.max_duration_s:g} s at {limits.max_fps:g} frames/s")
    video_packets = scan.packets(video_index)
    if video_packets.count == 0:
        raise MediaError(ErrorCode.NO_VIDEO_STREAM, f"{path.name}: the video stream holds no frame")
    # A track without a single packet is no track: a player plays nothing from it, and neither do we.
    audio = _pick([s for s in audios if scan.packets(_int(s.get("index")) or 0).count > 0])
    if audio is None and require_audio:
        raise MediaError(ErrorCode.NO_AUDIO_TRACK,
                         f"{path.name}: no audio track with sound in it ({len(audios)} empty; the model needs sound)")

    # Timeline: ffmpeg puts 0 at the container start (its start_time, else the earliest stream start).
    stream_starts = [t for t in (_float(s.get("start_time")) for s in streams) if t is not None]
    container_start = _float(fmt.get("start_time"))
    if container_start is None:
        container_start = min(stream_starts, default=0.0)
    video_start = video_packets.first_s
    if video_start is None:
        video_start = _float(video.get("start_time"))
    start_time_s = max(0.0, video_start - container_start) if video_start is not None else 0.0

    num_frames = video_packets.count
    duration_s = video_packets.span_s()
    if duration_s is None:
        duration_s = _header_duration(video, fmt, start_time_s)
    header_fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate")) or 0.0
    fps = num_frames / duration_s if duration_s is not None and num_frames > 1 else header_fps

    if duration_s is not None and duration_s > limits.max_duration_s:
        raise MediaError(
            ErrorCode.TOO_LONG,
            f"{path.name}: the video lasts {duration_s:.1f} s, the limit is {limits.max_duration_s:g} s",
        )
    if start_time_s > limits.max_duration_s:
        raise MediaError(
            ErrorCode.TOO_LONG,
            f"{path.name}: the video starts {start_time_s:.1f} s into the file, the limit is "
            f"{limits.max_duration_s:g} s",
        )

    language = _tag(audio, "language") if audio is not None else None
    return MediaInfo(
        path=str(path.resolve()),
        format_name=format_name,
        demuxer=demuxer,
        width=width,
        height=height,
        coded_width=coded_width,
        coded_height=coded_height,
        rotation=rotation,
        fps=round(fps, 6),
        duration_s=round(duration_s, 6) if duration_s is not None else None,
        start_time_s=round(start_time_s, 6),
        num_frames=num_frames,
        video_codec=video_codec,
        has_audio=audio is not None,
        audio_codec=(audio.get("codec_name") or None) if audio is not None else None,
        audio_sample_rate=_int(audio.get("sample_rate")) if audio is not None else None,
        audio_channels=_int(audio.get("channels")) if audio is not None else None,
        video_stream_index=video_index,
        audio_stream_index=_int(audio.get("index")) if audio is not None else None,
        audio_tracks=sum(1 for s in audios if scan.packets(_int(s.get("index")) or 0).count > 0),
        audio_language=str(language) if isinstance(language, str) and language not in ("", "und") else None,
        sample_aspect_ratio=_sample_aspect(video, rotation),
        origin_s=container_start,
        timeline_restarts=video_packets.restarts,
    )


def count_frames(path: str | Path, *, timeout_s: float = 120.0) -> int:
    """How many frames ffprobe decodes from the first video stream (`-count_frames`); for tests and checks."""
    command = [
        FFPROBE, "-hide_banner", "-v", "error",
        "-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST,
        "-count_frames", "-select_streams", "v:0",
        "-show_entries", "stream=nb_read_frames", "-print_format", "json",
        "-i", f"file:{Path(path).resolve()}",
    ]  # fmt: skip
    result = run_bounded(command, timeout_s=timeout_s)
    if result.timed_out:
        raise MediaError(ErrorCode.MEDIA_TIMEOUT, f"counting frames took longer than {timeout_s:g} s")
    try:
        streams = json.loads(result.stdout.decode("utf-8", errors="replace")).get("streams") or []
        return int(streams[0]["nb_read_frames"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        reason = ffmpeg_message(result.stderr, path, "ffprobe could not count frames")
        raise MediaError(ErrorCode.CORRUPT_MEDIA, reason) from None
